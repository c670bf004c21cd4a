from pathlib import Path

from streamline.workflow.checks import config_seq_lens
from streamline.workflow.plugins import load_plugins
from streamline.workflow.runstep import logged_step
from streamline.workflow.steps import acquire_step

with logged_step(snakemake.log[0], f"acquire_model[{snakemake.wildcards.model}]", snakemake.threads):
    load_plugins(snakemake.config["plugins"])  # config_seq_lens asks the registries about every configured name
    acquire_step(name=snakemake.wildcards.model, source=dict(snakemake.params.source), dtype=snakemake.params.dtype,
                 folder=Path(snakemake.output.manifest).parent, seq_lens=config_seq_lens(snakemake.config))
