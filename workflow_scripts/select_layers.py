from pathlib import Path

from streamline.provenance import write_settings
from streamline.workflow.plugins import load_plugins
from streamline.workflow.runstep import logged_step
from streamline.workflow.steps import select_step

w = snakemake.wildcards
targets = snakemake.params.targets
with logged_step(snakemake.log[0], f"select_layers[{w.model}/{w.method}]", snakemake.threads):
    load_plugins(snakemake.params.plugins)  # the plugin that registered this criterion, if any
    write_settings(Path(snakemake.output.order).parent, snakemake.params.key_settings)
    select_step(model_dir=Path(snakemake.input.manifest).parent, method=w.method, search=dict(snakemake.params.search),
                dataset=snakemake.params.calibration_dataset, settings=dict(snakemake.params.settings),
                max_sparsity=targets["max_sparsity"], max_layers=targets["max_layers"],
                sparsity_of=targets["sparsity_of"], run=dict(snakemake.params.run), out_path=snakemake.output.order)
