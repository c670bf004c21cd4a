from pathlib import Path

from streamline.runstep import logged_step
from streamline.steps import replace_step

w = snakemake.wildcards
with logged_step(snakemake.log[0], f"replace[{w.model}/{w.method}-{w.healing}/{w.target}]", snakemake.threads):
    replace_step(Path(snakemake.input.manifest).parent, snakemake.input.plan, w.healing,
                 dict(snakemake.params.training), dict(snakemake.params.lora), dict(snakemake.params.run),
                 snakemake.output.marker, snakemake.output.curve, pair_cache=snakemake.params.pair_cache)
