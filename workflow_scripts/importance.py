from streamline.runstep import logged_step
from streamline.steps import importance_step

with logged_step(snakemake.log[0], f"importance[{snakemake.wildcards.model}/{snakemake.wildcards.metric}]"):
    importance_step(snakemake.input.pairs, snakemake.wildcards.metric, snakemake.output.csv, snakemake.output.heatmap,
                    f"{snakemake.wildcards.model}: {snakemake.wildcards.metric} similarity of layer windows")
