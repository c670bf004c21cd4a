from pathlib import Path

from streamline.provenance import write_settings
from streamline.workflow.runstep import logged_step
from streamline.workflow.steps import model_stats_step

with logged_step(snakemake.log[0], f"model_stats[{snakemake.wildcards.model}/{snakemake.wildcards.variant}]", snakemake.threads):
    write_settings(Path(snakemake.output.stats).parent, snakemake.params.key_settings)
    model_stats_step(model_dir=Path(snakemake.input.checkpoint).parent, speed=dict(snakemake.params.speed),
                     run=dict(snakemake.params.run), out_path=snakemake.output.stats)
