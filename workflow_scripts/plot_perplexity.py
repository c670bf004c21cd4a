from streamline.workflow.runstep import logged_step
from streamline.workflow.steps import plot_step

with logged_step(snakemake.log[0], "plot_perplexity"):
    plot_step(figure="perplexity", all_csv=snakemake.input.table, png=snakemake.output.png, pdf=snakemake.output.pdf,
              dpi=snakemake.params.dpi)
