from streamline.runstep import logged_step
from streamline.tables import write_tables

with logged_step(snakemake.log[0], "tables"):
    write_tables(snakemake.input.table, snakemake.output.main, snakemake.output.main_tex, snakemake.output.stability)
