from streamline.runstep import logged_step
from streamline.steps import prune_step

w = snakemake.wildcards
with logged_step(snakemake.log[0], f"prune[{w.model}/{w.method}-{w.healing}/s{w.sparsity}]"):
    prune_step(snakemake.input.scores, snakemake.input.manifest, snakemake.params.sparsity, w.healing, w.method,
               snakemake.output.plan, snakemake.params.seed)
