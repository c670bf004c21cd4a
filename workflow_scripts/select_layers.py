from pathlib import Path

from streamline.runstep import logged_step
from streamline.steps import select_step

w = snakemake.wildcards
targets = snakemake.params.targets
with logged_step(snakemake.log[0], f"select_layers[{w.model}/{w.method}]", snakemake.threads):
    select_step(Path(snakemake.input.manifest).parent, w.method, dict(snakemake.params.search),
                snakemake.params.calibration_dataset, dict(snakemake.params.laco), targets["max_sparsity"],
                dict(snakemake.params.run), snakemake.output.order, targets["max_layers"], targets["sparsity_of"])
