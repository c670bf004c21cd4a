from streamline.runstep import logged_step
from streamline.steps import prune_step

w = snakemake.wildcards
with logged_step(snakemake.log[0], f"prune[{w.model}/{w.method}-{w.replacement}/s{w.sparsity}]"):
    prune_step(snakemake.input.scores, snakemake.input.manifest, snakemake.params.sparsity, w.replacement,
               w.method, snakemake.output.plan)
