from pathlib import Path

from streamline.runstep import logged_step
from streamline.steps import model_stats_step

with logged_step(snakemake.log[0], f"model_stats[{snakemake.wildcards.model}/{snakemake.wildcards.variant}]", snakemake.threads):
    model_stats_step(model_dir=Path(snakemake.input.checkpoint).parent, speed=dict(snakemake.params.speed),
                     run=dict(snakemake.params.run), out_path=snakemake.output.stats)
