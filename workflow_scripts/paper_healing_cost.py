from streamline.reporting.paper import healing_cost
from streamline.workflow.runstep import logged_step

with logged_step(snakemake.log[0], "paper_healing_cost"):
    healing_cost(snakemake.input.table, png=snakemake.output.png, pdf=snakemake.output.pdf, dpi=snakemake.params.dpi)
