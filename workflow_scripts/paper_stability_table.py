from streamline.reporting.paper import stability_table
from streamline.workflow.runstep import logged_step

with logged_step(snakemake.log[0], "paper_stability_table"):
    stability_table(snakemake.input.table, md=snakemake.output.md, tex=snakemake.output.tex)
