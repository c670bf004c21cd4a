from streamline.reporting.paper import sparsity_curves
from streamline.workflow.runstep import logged_step

with logged_step(snakemake.log[0], "paper_sparsity_curves"):
    sparsity_curves(snakemake.input.table, png=snakemake.output.png, pdf=snakemake.output.pdf, dpi=snakemake.params.dpi)
