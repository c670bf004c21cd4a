from streamline.plots import healing_cost
from streamline.runstep import logged_step

with logged_step(snakemake.log[0], "plot_healing_cost"):
    healing_cost(snakemake.input.table, snakemake.output.png, snakemake.output.pdf, dpi=snakemake.params.dpi)
