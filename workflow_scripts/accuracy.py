from pathlib import Path

from streamline.runstep import logged_step
from streamline.steps import accuracy_step

with logged_step(snakemake.log[0], f"accuracy[{snakemake.wildcards.model}/{snakemake.wildcards.variant}]", snakemake.threads):
    accuracy_step(Path(snakemake.input.checkpoint).parent, dict(snakemake.params.evaluation),
                  dict(snakemake.params.run), snakemake.output.accuracy, snakemake.output.samples)
