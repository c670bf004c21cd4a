from pathlib import Path

from streamline.runstep import logged_step
from streamline.steps import perplexity_step

with logged_step(snakemake.log[0], f"perplexity[{snakemake.wildcards.model}/{snakemake.wildcards.variant}]", snakemake.threads):
    perplexity_step(Path(snakemake.input.checkpoint).parent, dict(snakemake.params.perplexity),
                    dict(snakemake.params.run), snakemake.output.ppl)
