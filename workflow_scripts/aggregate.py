from streamline.workflow.record_steps import aggregate_step
from streamline.workflow.runstep import logged_step

with logged_step(snakemake.log[0], "aggregate"):
    aggregate_step(entries=[dict(e) for e in snakemake.params.entries], manifests=snakemake.input.manifests,
                   table_path=snakemake.output.table, config_hash=snakemake.params.config_hash,
                   seed=snakemake.params.seed, experiment=snakemake.params.experiment)
