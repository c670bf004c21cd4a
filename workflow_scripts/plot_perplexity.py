from streamline.plots import perplexity_vs_sparsity
from streamline.runstep import logged_step

with logged_step(snakemake.log[0], "plot_perplexity"):
    perplexity_vs_sparsity(snakemake.input.table, snakemake.output.png, snakemake.output.pdf, dpi=snakemake.params.dpi)
