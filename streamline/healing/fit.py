"""The closed-form healings (healing_kinds.FITS): one pass of the dense model over the training windows, a fit, no
training loop; the checkpoint is built from a fresh copy of the dense weights in their own dtype.

- `replaceme` / `replaceme-cosine` (replaceme.py, mts-ai/ReplaceMe lstsq.py / cosine_dist.py, cited there): the
  map T is fitted on the training windows (the MLP output of layer start-1 and the states h_start, h_end: hooks,
  so the pair cache does not hold them) and fused into layer start-1's down_proj, then the window is removed: a
  stock checkpoint. A window starting at layer 0 has no layer to fuse into and is refused.
- `linearpatch` (linear_patch.py, chenxinrui-tsinghua/LinearPatch layer_select.py:6-52, branch `residual`, the
  official form): the channel scales come from the (h_start, h_end) pairs of the shared pair cache
  (pair_cache.py), the same pairs the replacements of that window train on, so with the cache filled the fit runs
  no model at all; P is stored as the `linear` extra (W = P - I) in front of the layer after the window.

Cost, as every healing records it: `fit_seconds` (the forward passes, unless the pairs were reused, and the solve)
is also written as `train_seconds`, the key all.csv and the healing-cost plot read; `calibration_tokens` (also
`tokens_seen`, all.csv's train_tokens); `trainable_params`, the fitted numbers (d^2 for T, d scales for P); peak
memory. Like the replacements, `val_loss_identity` (plain removal) and `best_val_loss` (with the fit) are the MSE
of the predicted h_end on the held-out validation windows.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from streamline.acquisition.models import load_model
from streamline.healing import kinds as healing_kinds
from streamline.healing.job import HealingJob
from streamline.healing.linear_patch import hadamard_matrix, patch_matrix, patch_module, sequence_scales
from streamline.healing.replace import evaluate_mse, save_healed, window_pairs
from streamline.healing.replaceme import fit_map, fuse_into_down_proj, normal_equations
from streamline.healing.training import peak_memory

SOLVERS = {"replaceme-lstsq": "lstsq", "replaceme-cosine": "cosine"}  # kinds.FITS -> replaceme solver


def fit_window(job: HealingJob) -> tuple[int, int]:
    """(start, end) of the job's window; ReplaceMe needs a layer before it (one line otherwise)."""
    start, end = job.window
    if job.kind.fit in SOLVERS and start < 1:
        raise ValueError(
            f"healing {job.healing!r} fuses its map into the layer before the window, but the plan's window "
            f"{start}..{end - 1} starts at layer 0; use a method whose window starts at layer 1 or later"
        )
    return start, end


def pair_scales(shards: list[Path], hadamard: torch.Tensor) -> tuple[torch.Tensor, int]:
    """LinearPatch's channel scales (d,) from cached (h_in = h_start, h_out = h_end) shards, and their tokens:
    per sequence mean|h_end H| / mean|h_start H|, averaged over sequences (layer_select.py:33-52)."""
    per_sequence, tokens = [], 0
    for path in shards:
        pair = load_file(str(path))
        h_in, h_out = pair["h_in"], pair["h_out"]  # (S, T, d) each
        per_sequence.append(sequence_scales(h_in, h_out, hadamard))  # (S, d)
        tokens += h_in.shape[0] * h_in.shape[1]
    return torch.cat(per_sequence).mean(dim=0), tokens


def _fit_linearpatch(model, job: HealingJob) -> tuple[torch.Tensor, dict[str, Any]]:
    """P (d, d) float64 from the job's shared pairs, and its statistics."""
    batch_size, device = job.cfg.batch_size, job.runtime.device
    started = time.perf_counter()
    with window_pairs(job, model) as (train_shards, val_shards, reused):
        hadamard = hadamard_matrix(int(model.config.hidden_size))
        scales, tokens = pair_scales(train_shards, hadamard)
        patch = patch_matrix(scales, hadamard)  # (d, d)
        seconds = time.perf_counter() - started
        mapped = patch.float().to(device)
        stats = {
            "pairs_reused": reused,
            "fit_seconds": seconds,
            "calibration_tokens": tokens,
            "trainable_params": int(scales.numel()),
            "scale_min": float(scales.min()),
            "scale_max": float(scales.max()),
            "val_loss_identity": evaluate_mse(lambda h: h, val_shards, batch_size, device),
            "best_val_loss": evaluate_mse(lambda h: h @ mapped, val_shards, batch_size, device),
        }
    return patch, stats


def _fit_replaceme(
    model, start, end, train_ids, val_ids, *, solver, batch_size, seed
) -> tuple[torch.Tensor, dict[str, Any]]:
    """T (d, d) float64 on the training windows, and its statistics (validation MSE from one pass over val_ids)."""
    transform, stats = fit_map(model, train_ids, start, end, solver, batch_size, seed=seed)
    val = normal_equations(model, val_ids, start, end, batch_size)
    return transform, {
        "fit_seconds": stats["fit_seconds"],
        "calibration_tokens": stats["calibration_tokens"],
        "trainable_params": int(transform.numel()),
        "window_mse_removed": stats["window_mse_removed"],
        "window_mse_fitted": stats["window_mse_fitted"],
        "val_loss_identity": val.mse(None),
        "best_val_loss": val.mse(transform),
    }


def fit_healing(job: HealingJob) -> dict[str, Any]:
    """Fit the job's kind (a kind with a kinds.FITS `fit`) on its training windows for the plan's window, write the
    compressed checkpoint to `job.out_dir` and return the statistics (module docstring)."""
    fit = job.kind.fit
    if fit is None:
        fits = ", ".join(name for name, entry in healing_kinds.HEALING_KINDS.items() if entry.fit)
        raise ValueError(f"healing {job.healing!r} is not a closed-form fit; fits: {fits}")
    start, end = fit_window(job)
    model, _ = load_model(job.dense_dir, job.runtime.compute_dtype, job.runtime.device)
    if fit in SOLVERS:
        transform, stats = _fit_replaceme(
            model, start, end, job.train_ids, job.val_ids, solver=SOLVERS[fit], batch_size=job.cfg.batch_size,
            seed=job.cfg.seed,
        )
        del model
        save_healed(job, None, lambda dense: fuse_into_down_proj(dense, start - 1, transform))  # then removed
    else:
        transform, stats = _fit_linearpatch(model, job)
        del model
        save_healed(job, patch_module(transform))
    return {
        "healing": job.healing,
        "fit": fit,
        "window": [start, end],
        **stats,
        "train_seconds": stats["fit_seconds"],
        "tokens_seen": stats["calibration_tokens"],
        **peak_memory(),  # the whole job: the dense pass, the fit and the checkpoint
    }
