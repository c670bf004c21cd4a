from streamline.reporting.paper import training_data_size
from streamline.workflow.runstep import logged_step

with logged_step(snakemake.log[0], "paper_training_data_size"):
    training_data_size(
        snakemake.input.table, png=snakemake.output.png, pdf=snakemake.output.pdf, dpi=snakemake.params.dpi
    )
