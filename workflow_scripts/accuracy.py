from pathlib import Path

from streamline.provenance import write_settings
from streamline.workflow.runstep import logged_step
from streamline.workflow.steps import accuracy_step

with logged_step(snakemake.log[0], f"accuracy[{snakemake.wildcards.model}/{snakemake.wildcards.variant}]", snakemake.threads):
    write_settings(Path(snakemake.output.accuracy).parent, snakemake.params.key_settings)
    accuracy_step(model_dir=Path(snakemake.input.checkpoint).parent, evaluation=dict(snakemake.params.evaluation),
                  run=dict(snakemake.params.run), accuracy_path=snakemake.output.accuracy,
                  samples_dir=snakemake.output.samples)
