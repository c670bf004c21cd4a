from streamline.workflow.record_steps import importance_step
from streamline.workflow.runstep import logged_step

w = snakemake.wildcards
with logged_step(snakemake.log[0], f"importance[{w.model}/{w.metric}]"):
    importance_step(pairs_path=snakemake.input.pairs, metric=w.metric, csv_path=snakemake.output.csv,
                    png_path=snakemake.output.heatmap, title=f"{w.model}: {w.metric} similarity of layer windows")
