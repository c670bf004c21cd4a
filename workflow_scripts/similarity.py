from pathlib import Path

from streamline.runstep import logged_step
from streamline.steps import similarity_step

with logged_step(snakemake.log[0], f"similarity[{snakemake.wildcards.model}]", snakemake.threads):
    similarity_step(Path(snakemake.input.manifest).parent, snakemake.output.pairs,
                    dict(snakemake.params.calibration), dict(snakemake.params.run))
