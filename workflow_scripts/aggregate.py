from streamline.report import build_all_table
from streamline.runstep import logged_step

with logged_step(snakemake.log[0], "aggregate"):
    build_all_table(snakemake.input.manifests, snakemake.input.plans, snakemake.input.accuracy,
                    snakemake.input.ppl, snakemake.input.stats, snakemake.input.stability,
                    snakemake.output.table, snakemake.params.config_hash, snakemake.params.seed)
