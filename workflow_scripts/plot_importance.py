from streamline.workflow.record_steps import importance_plot_step
from streamline.workflow.runstep import logged_step

with logged_step(snakemake.log[0], f"plot_importance[{snakemake.wildcards.model}]"):
    importance_plot_step(scores_csv=snakemake.input.scores, plans=snakemake.input.plans, png=snakemake.output.png,
                         pdf=snakemake.output.pdf, model=snakemake.wildcards.model, dpi=snakemake.params.dpi)
