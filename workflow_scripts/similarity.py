from pathlib import Path

from streamline.provenance import write_settings
from streamline.workflow.runstep import logged_step
from streamline.workflow.steps import similarity_step

with logged_step(snakemake.log[0], f"similarity[{snakemake.wildcards.model}]", snakemake.threads):
    write_settings(Path(snakemake.output.pairs).parent, snakemake.params.key_settings)
    similarity_step(model_dir=Path(snakemake.input.manifest).parent, out_path=snakemake.output.pairs,
                    calibration=dict(snakemake.params.calibration), run=dict(snakemake.params.run))
