from pathlib import Path

from streamline.provenance import write_settings
from streamline.workflow.record_steps import stability_step
from streamline.workflow.runstep import logged_step

with logged_step(snakemake.log[0], f"stability[{snakemake.wildcards.model}/{snakemake.wildcards.variant}]"):
    write_settings(Path(snakemake.output.stability).parent, snakemake.params.key_settings)
    stability_step(dense_samples=snakemake.input.dense, variant_samples=snakemake.input.variant,
                   out_path=snakemake.output.stability, correctness=snakemake.params.correctness)
