from streamline.reporting.paper import lightweight_ablation
from streamline.workflow.runstep import logged_step

with logged_step(snakemake.log[0], "paper_lightweight_ablation"):
    lightweight_ablation(snakemake.input.table, md=snakemake.output.md, tex=snakemake.output.tex)
