from pathlib import Path

from streamline.checks import config_seq_lens, seq_len_warnings, warn
from streamline.models import acquire_model
from streamline.provenance import now_iso, write_provenance
from streamline.runstep import logged_step

with logged_step(snakemake.log[0], f"acquire_model[{snakemake.wildcards.model}]", snakemake.threads):
    started = now_iso()
    folder = Path(snakemake.output.manifest).parent
    source = dict(snakemake.params.source)
    manifest = acquire_model(snakemake.wildcards.model, source, folder, snakemake.params.dtype)
    write_provenance(folder, config={"source": source, "dtype": snakemake.params.dtype}, seed=None,
                     device="cpu", started=started, step="acquire_model")
    if "local" not in source:  # a local source's config.json was already checked before any job ran
        positions = manifest.get("max_position_embeddings")
        for line in seq_len_warnings(snakemake.wildcards.model, positions, config_seq_lens(snakemake.config)):
            warn(line)
