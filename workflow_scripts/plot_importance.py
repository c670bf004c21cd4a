from streamline.plots import importance_with_windows
from streamline.runstep import logged_step

with logged_step(snakemake.log[0], f"plot_importance[{snakemake.wildcards.model}]"):
    importance_with_windows(snakemake.input.scores, snakemake.input.plans, snakemake.output.png,
                            snakemake.output.pdf, snakemake.wildcards.model, dpi=snakemake.params.dpi)
