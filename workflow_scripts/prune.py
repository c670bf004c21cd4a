from streamline.runstep import logged_step
from streamline.steps import prune_step

w = snakemake.wildcards
target = snakemake.params.target
with logged_step(snakemake.log[0], f"prune[{w.model}/{w.method}-{w.healing}/{w.target}]"):
    prune_step(snakemake.input.scores, snakemake.input.manifest, target["sparsity"], w.healing, w.method,
               snakemake.output.plan, snakemake.params.seed, layers=target["layers"],
               sparsity_of=snakemake.params.sparsity_of)
