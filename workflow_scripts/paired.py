from streamline.workflow.record_steps import paired_step
from streamline.workflow.runstep import logged_step

with logged_step(snakemake.log[0], "paired"):
    paired_step(entries=[dict(e) for e in snakemake.params.entries], intervals=dict(snakemake.params.intervals),
                correctness=snakemake.params.correctness, out_path=snakemake.output.paired)
