from streamline.reporting.paper import main_table
from streamline.workflow.runstep import logged_step

with logged_step(snakemake.log[0], "paper_main_table"):
    main_table(snakemake.input.table, md=snakemake.output.md, tex=snakemake.output.tex)
