from streamline.workflow.record_steps import tables_step
from streamline.workflow.runstep import logged_step

with logged_step(snakemake.log[0], "tables"):
    tables_step(all_csv=snakemake.input.table, paired_csv=snakemake.input.paired, main_md=snakemake.output.main,
                main_tex=snakemake.output.main_tex, stability_md=snakemake.output.stability)
