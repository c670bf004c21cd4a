"""The training loop every healing kind shares: AdamW, a learning-rate schedule with warm-up, best validation kept.

The defaults are this project's loop (recipe `project`): one optimizer step per batch, cosine schedule to 0 after
`warmup_ratio` of the steps, no clipping. The other fields give the official loops (recipes.py fills them for
recipe `official`; docs/deviations.md): gradient accumulation, gradient clipping, LLM-Streamline's cosine schedule to
`min_lr` sized by the micro-batch count (scheduler.py), the linear schedule with fixed warm-up steps of
transformers' Trainer, and the attention of a `layer` replacement trained alone.
"""

from __future__ import annotations

import math
import resource
import time
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.optim.lr_scheduler import LambdaLR
from tqdm import tqdm
from transformers import get_cosine_schedule_with_warmup, get_linear_schedule_with_warmup

from streamline.healing.train_config import TrainConfig


def official_cosine_factor(step: float, warmup: float, total: float, lr: float, min_lr: float) -> float:
    """LLM-Streamline's LR factor (LLM_Streamline/scheduler.py:53-62, num_cycles 0.5): linear warm-up from 0 over
    `warmup`, then lr follows min_lr + (lr - min_lr) (1 + cos(pi p)) / 2 with p the progress to `total` (and beyond:
    past `total` the cosine rises again, as the official one does)."""
    if step < warmup:
        return float(step) / float(max(1, warmup))
    progress = float(step - warmup) / float(max(1, total - warmup))
    factor = max(0, 0.5 * (1.0 + math.cos(math.pi * 0.5 * 2.0 * progress)))
    return (min_lr + factor * (lr - min_lr)) / lr


def make_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps: int, micro_batches: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """The LR schedule of `cfg` for a run of `steps` optimizer steps over `micro_batches` micro-batches."""
    seen = steps if cfg.schedule_per == "step" else micro_batches  # scheduler.step() calls the run makes
    if cfg.horizon is None:
        total = seen
        warmup = cfg.warmup_steps if cfg.warmup_steps is not None else int(cfg.warmup_ratio * total)
    else:  # sized by the micro-batch count, fractional as the official code leaves it (len(loader) * 0.5 ...)
        total = micro_batches * cfg.horizon
        warmup = cfg.warmup_steps if cfg.warmup_steps is not None else micro_batches * cfg.warmup_ratio
    if cfg.schedule == "cosine":
        return get_cosine_schedule_with_warmup(optimizer, warmup, total)
    if cfg.schedule == "linear":
        return get_linear_schedule_with_warmup(optimizer, warmup, total)
    return LambdaLR(optimizer, lambda step: official_cosine_factor(step, warmup, total, cfg.lr, cfg.min_lr))


def fit(
    params: list[torch.nn.Parameter],
    epoch_batches: Callable[[torch.Generator], Iterable[tuple[torch.Tensor, int]]],
    batches_per_epoch: int,
    validate: Callable[[], float],
    cfg: TrainConfig,
    desc: str,
) -> dict[str, Any]:
    """Minimise the losses `epoch_batches(generator)` yields as (loss, tokens), `batches_per_epoch` micro-batches an
    epoch, over `params`.

    Validation runs before training (epoch 0) and after every epoch; the parameters of the best validation
    loss are restored at the end. Returns the loss curve and run statistics (time, tokens, optimizer steps, peak
    memory).
    """
    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=cfg.betas)
    total_steps = cfg.optimizer_steps(batches_per_epoch) * cfg.epochs
    scheduler = make_scheduler(optimizer, cfg, total_steps, batches_per_epoch * cfg.epochs)
    best_val = validate()
    best = [p.detach().clone() for p in params]
    curve = [{"epoch": 0, "step": 0, "train_loss": float("nan"), "val_loss": best_val, "lr": 0.0}]
    tokens, step, started = 0, 0, time.perf_counter()
    bar = tqdm(total=batches_per_epoch * cfg.epochs, desc=desc, disable=not cfg.progress)
    for epoch in range(1, cfg.epochs + 1):
        epoch_loss, batches, pending = 0.0, 0, 0
        optimizer.zero_grad(set_to_none=True)  # what an epoch's last partial accumulation left is dropped
        for loss, batch_tokens in epoch_batches(generator):
            (loss / cfg.accumulation if cfg.accumulation > 1 else loss).backward()
            pending += 1
            batches += 1
            if pending == cfg.accumulation or (cfg.partial_step and batches == batches_per_epoch):
                if cfg.max_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                if cfg.schedule_per == "step":
                    scheduler.step()
                step += 1
                pending = 0
            if cfg.schedule_per == "micro":  # the official loops: the first micro-batches may precede a step
                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step", category=UserWarning)
                    scheduler.step()
            tokens += batch_tokens
            epoch_loss += loss.item()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.4g}")
        val = validate()
        curve.append(
            {
                "epoch": epoch,
                "step": step,
                "train_loss": epoch_loss / max(batches, 1),
                "val_loss": val,
                "lr": scheduler.get_last_lr()[0],
            }
        )
        if val < best_val:
            best_val, best = val, [p.detach().clone() for p in params]
    bar.close()
    with torch.no_grad():
        for param, value in zip(params, best):
            param.copy_(value)
    return {
        "curve": curve,
        "best_val_loss": best_val,
        "train_seconds": time.perf_counter() - started,
        "tokens_seen": tokens,
        "steps": step,
        "trainable_params": sum(p.numel() for p in params),
        **peak_memory(),
    }


def peak_memory() -> dict[str, float]:
    """Peak memory of this process so far: resident MB, and GPU MB where CUDA is available."""
    peak = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if torch.cuda.is_available():
        peak["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return peak
