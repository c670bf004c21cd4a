from pathlib import Path

from streamline.workflow.plugins import load_plugins
from streamline.workflow.runstep import logged_step
from streamline.workflow.steps import replace_step

w = snakemake.wildcards
with logged_step(snakemake.log[0], f"replace[{w.model}/{w.method}-{w.healing}/{w.target}]", snakemake.threads):
    load_plugins(snakemake.params.plugins)  # the plugins that registered this method or healing kind, if any
    replace_step(model_dir=Path(snakemake.input.manifest).parent, plan_path=snakemake.input.plan, healing=w.healing,
                 training=dict(snakemake.params.training), lora=dict(snakemake.params.lora),
                 run=dict(snakemake.params.run), marker_path=snakemake.output.marker,
                 curve_path=snakemake.output.curve, pair_cache=snakemake.params.pair_cache)
