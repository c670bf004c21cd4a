from streamline.reporting.paper import pruning_metric
from streamline.workflow.runstep import logged_step

with logged_step(snakemake.log[0], "paper_pruning_metric"):
    pruning_metric(snakemake.input.table, md=snakemake.output.md, tex=snakemake.output.tex)
