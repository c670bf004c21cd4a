"""Cost of the search-based criteria on the embedded default (SmolLM2-135M, dtype auto, 25% of the layers).

Prints each method's wall time and the same in units of one calibration forward pass measured in this run,
so users see what sleb, shortened-ppl and laco cost before adding them to a config.
"""

from __future__ import annotations

import time

from _common import DTYPE, calibration_ids, dense_checkpoint

from streamline.acquisition.models import load_model
from streamline.atomic import read_json
from streamline.pruning import criteria

SAMPLES, SEQ_LEN, BATCH, SPARSITY = 8, 256, 4, 0.25  # the schema's `search` defaults


def main() -> None:
    path = dense_checkpoint()
    manifest = read_json(path / "manifest.json")
    model, tokenizer = load_model(path, DTYPE)
    batches = list(calibration_ids(tokenizer, SAMPLES, SEQ_LEN).split(BATCH))
    criteria.calibration_nll(model, batches[:1])
    start = time.perf_counter()
    criteria.calibration_nll(model, batches)
    forward = time.perf_counter() - start
    print(f"one calibration pass ({SAMPLES} x {SEQ_LEN} tokens): {forward:.2f} s")
    enough = criteria.search_enough(manifest, SPARSITY, None, "layers")  # the schema default sparsity_of
    runs = {
        "shortened-ppl": lambda m: criteria.shortened_ppl_order(m, batches, progress=False),
        "sleb": lambda m: criteria.sleb_order(m, batches, enough, progress=False),
        "laco": lambda m: criteria.laco_merges(m, batches, enough, progress=False),
    }
    for name, run in runs.items():
        fresh, _ = load_model(path, DTYPE)
        start = time.perf_counter()
        run(fresh)
        seconds = time.perf_counter() - start
        print(f"{name:14s}: {seconds:7.1f} s = {seconds / forward:6.1f} calibration passes")


if __name__ == "__main__":
    main()
