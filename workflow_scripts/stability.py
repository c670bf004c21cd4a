from streamline.runstep import logged_step
from streamline.steps import stability_step

with logged_step(snakemake.log[0], f"stability[{snakemake.wildcards.model}/{snakemake.wildcards.variant}]"):
    stability_step(snakemake.input.dense, snakemake.input.variant, snakemake.output.stability,
                   snakemake.params.correctness)
