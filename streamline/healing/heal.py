"""Run a healing job: dispatched by its kind's `trains` to the one function that heals that way.

- None (`none`): the plan applied as it is, no training (remove_only);
- "pairs": a module trained with MSE on the window's cached hidden-state pairs (replace.train_pairs);
- "lm": LoRA, lm-loss or the last layers trained with the LM loss in the pruned model (lm.train_lm_healing);
- "fit": ReplaceMe's or LinearPatch's closed-form fit (fit.fit_healing).
Each writes the compressed checkpoint to the job's `out_dir` and returns the statistics compressed.json records.
"""

from __future__ import annotations

import resource
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from streamline.healing import kinds as healing_kinds
from streamline.healing.fit import fit_healing
from streamline.healing.job import Caches, HealingJob, Runtime
from streamline.healing.lm import train_lm_healing
from streamline.healing.replace import save_healed, train_pairs
from streamline.healing.train_config import TrainConfig


def remove_only(job: HealingJob) -> dict[str, Any]:
    """The plan applied to a fresh copy of the dense weights (removal, LaCo merges), nothing trained."""
    save_healed(job, None)
    return {"healing": job.healing, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


TRAINERS: dict[str | None, Callable[[HealingJob], dict[str, Any]]] = {
    None: remove_only,
    "pairs": train_pairs,
    "lm": train_lm_healing,
    "fit": fit_healing,
}


def heal(job: HealingJob) -> dict[str, Any]:
    """Build the compressed checkpoint of `job`; returns its statistics (loss curve, cost, what was chosen)."""
    return TRAINERS[job.kind.trains](job)


def run_healing(
    dense_dir: str | Path,
    plan: dict[str, Any],
    healing: str,
    train_ids: torch.Tensor,
    val_ids: torch.Tensor,
    out_dir: str | Path,
    *,
    cfg: TrainConfig,
    device: str = "cpu",
    compute_dtype: torch.dtype = torch.float32,
    lora: dict[str, Any] | None = None,
    init_layer: str | None = "first",
    **caches: Any,
) -> dict[str, Any]:
    """heal() for callers holding plain values (tests, benchmarks): the job of healing `healing` (a registered
    kind's name) of the dense checkpoint `dense_dir` by `plan`, on the (S, T) token windows `train_ids` / `val_ids`;
    `caches`: the fields of job.Caches (pair_cache, scratch_dir, shard_sequences)."""
    job = HealingJob(
        healing_kinds.get(healing),
        plan,
        Path(dense_dir),
        Path(out_dir),
        train_ids,
        val_ids,
        cfg,
        lora or {},
        init_layer,
        Runtime(device, compute_dtype),
        Caches(**caches),
    )
    return heal(job)
