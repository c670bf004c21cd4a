from streamline.reporting.paper import importance_figure
from streamline.workflow.runstep import logged_step

with logged_step(snakemake.log[0], f"paper_importance[{snakemake.wildcards.model}]"):
    importance_figure(
        snakemake.input.scores,
        list(snakemake.input.plans),
        png=snakemake.output.png,
        pdf=snakemake.output.pdf,
        model=snakemake.wildcards.model,
        dpi=snakemake.params.dpi,
    )
