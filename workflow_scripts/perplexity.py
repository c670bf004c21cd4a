from pathlib import Path

from streamline.provenance import write_settings
from streamline.workflow.runstep import logged_step
from streamline.workflow.steps import perplexity_step

with logged_step(snakemake.log[0], f"perplexity[{snakemake.wildcards.model}/{snakemake.wildcards.variant}]", snakemake.threads):
    write_settings(Path(snakemake.output.ppl).parent, snakemake.params.key_settings)
    perplexity_step(model_dir=Path(snakemake.input.checkpoint).parent, settings=dict(snakemake.params.perplexity),
                    run=dict(snakemake.params.run), out_path=snakemake.output.ppl)
