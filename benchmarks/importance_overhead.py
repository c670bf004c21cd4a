"""Importance pass wall time / one plain forward pass over the same tokens (target <= 1.15).

Both are measured in this run on the embedded default (SmolLM2-135M, bf16), same batches, after a warm-up.
"""

from __future__ import annotations

import time

import torch
from _common import DTYPE, calibration_ids, dense_checkpoint

from streamline.acquisition.models import load_model
from streamline.importance.scores import accumulate


def main(samples: int = 16, seq_len: int = 512, batch_size: int = 4) -> None:
    model, tokenizer = load_model(dense_checkpoint(), DTYPE)
    batches = list(calibration_ids(tokenizer, samples, seq_len).split(batch_size))
    with torch.no_grad():
        model(batches[0][:, :16])
        start = time.perf_counter()
        for batch in batches:
            model(batch, use_cache=False)
        plain = time.perf_counter() - start
    start = time.perf_counter()
    accumulate(model, batches, progress=False)
    scored = time.perf_counter() - start
    print(f"tokens: {samples * seq_len}, plain forward: {plain:.2f} s, importance pass: {scored:.2f} s")
    print(f"importance / plain forward = {scored / plain:.3f}  (target <= 1.15)")


if __name__ == "__main__":
    main()
