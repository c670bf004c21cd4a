from streamline.runstep import logged_step
from streamline.steps import aggregate_step

with logged_step(snakemake.log[0], "aggregate"):
    aggregate_step(manifests=snakemake.input.manifests, plans=snakemake.input.plans,
                   accuracy=snakemake.input.accuracy, ppl=snakemake.input.ppl, stats=snakemake.input.stats,
                   stability=snakemake.input.stability, table_path=snakemake.output.table,
                   config_hash=snakemake.params.config_hash, seed=snakemake.params.seed)
