from streamline.plots import accuracy_vs_sparsity
from streamline.runstep import logged_step

with logged_step(snakemake.log[0], f"plot_accuracy[{snakemake.wildcards.kind}]"):
    accuracy_vs_sparsity(snakemake.input.table, snakemake.output.png, snakemake.output.pdf,
                         relative=snakemake.wildcards.kind == "relative_accuracy", dpi=snakemake.params.dpi)
