from streamline.workflow.record_steps import paper_step
from streamline.workflow.runstep import logged_step

item, model = snakemake.wildcards.item, getattr(snakemake.wildcards, "model", "")
with logged_step(snakemake.log[0], f"paper[{item}{'_' + model if model else ''}]"):
    inputs = {name: list(files) if name == "plans" else files for name, files in snakemake.input.items()}
    paper_step(item=item, outputs=list(snakemake.output), inputs=inputs, model=model, dpi=snakemake.params.dpi)
