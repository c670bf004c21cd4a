from streamline.workflow.record_steps import plot_step
from streamline.workflow.runstep import logged_step

with logged_step(snakemake.log[0], f"plot[{snakemake.wildcards.plot}]"):
    plot_step(figure=snakemake.wildcards.plot, all_csv=snakemake.input.table, paired_csv=snakemake.input.paired,
              png=snakemake.output.png, pdf=snakemake.output.pdf, dpi=snakemake.params.dpi)
