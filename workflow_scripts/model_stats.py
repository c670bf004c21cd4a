from pathlib import Path

from streamline.runstep import logged_step
from streamline.steps import model_stats_step

with logged_step(snakemake.log[0], f"model_stats[{snakemake.wildcards.model}/{snakemake.wildcards.variant}]", snakemake.threads):
    model_stats_step(Path(snakemake.input.checkpoint).parent, dict(snakemake.params.speed),
                     dict(snakemake.params.run), snakemake.output.stats)
