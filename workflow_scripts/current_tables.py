from streamline.atomic import copy_files
from streamline.workflow.runstep import logged_step

with logged_step(snakemake.log[0], f"current_tables[{snakemake.params.experiment}]"):
    copy_files(list(snakemake.input), list(snakemake.output))
