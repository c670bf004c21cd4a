from pathlib import Path

from streamline.provenance import write_settings
from streamline.workflow.plugins import load_plugins
from streamline.workflow.record_steps import prune_step
from streamline.workflow.runstep import logged_step

w = snakemake.wildcards
target = snakemake.params.target
with logged_step(snakemake.log[0], f"prune[{w.model}/{w.method}-{w.healing}/{w.target}]"):
    write_settings(Path(snakemake.output.plan).parent, snakemake.params.key_settings)
    load_plugins(snakemake.params.plugins)  # the plugin that registered this criterion, if any
    prune_step(scores=snakemake.input.scores or None, manifest_path=snakemake.input.manifest,
               sparsity=target["sparsity"], layers=target["layers"], healing=w.healing, method=w.method,
               settings=dict(snakemake.params.settings), sparsity_of=snakemake.params.sparsity_of,
               plan_path=snakemake.output.plan)
