"""The training loop every healing kind shares: AdamW, cosine schedule with warm-up, best validation kept."""

from __future__ import annotations

import resource
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from tqdm import tqdm
from transformers import get_cosine_schedule_with_warmup


@dataclass(frozen=True)
class TrainConfig:
    """Optimiser settings; the defaults equal the schema's `training` defaults (tests/test_registry.py checks)."""

    epochs: int = 5
    batch_size: int = 8
    lr: float = 2e-4  # the paper's code
    weight_decay: float = 1e-3  # the paper's code
    warmup_ratio: float = 0.1
    betas: tuple[float, float] = (0.9, 0.999)  # torch's AdamW default, as the paper's MSE training uses it
    seed: int = 0
    progress: bool = True

    @classmethod
    def from_settings(cls, training: dict[str, Any]) -> TrainConfig:
        """From the config's `training` section (the schema's fields; the other keys are the data's)."""
        keys = ("epochs", "batch_size", "lr", "weight_decay", "warmup_ratio", "seed")
        return cls(**{key: training[key] for key in keys})


def fit(
    params: list[torch.nn.Parameter],
    epoch_batches: Callable[[torch.Generator], Iterable[tuple[torch.Tensor, int]]],
    steps_per_epoch: int,
    validate: Callable[[], float],
    cfg: TrainConfig,
    desc: str,
) -> dict[str, Any]:
    """Minimise the losses `epoch_batches(generator)` yields as (loss, tokens) over `params`.

    Validation runs before training (epoch 0) and after every epoch; the parameters of the best validation
    loss are restored at the end. Returns the loss curve and run statistics (time, tokens, peak memory).
    """
    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=cfg.betas)
    total_steps = steps_per_epoch * cfg.epochs
    scheduler = get_cosine_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * total_steps), total_steps)
    best_val = validate()
    best = [p.detach().clone() for p in params]
    curve = [{"epoch": 0, "step": 0, "train_loss": float("nan"), "val_loss": best_val, "lr": 0.0}]
    tokens, step, started = 0, 0, time.perf_counter()
    bar = tqdm(total=total_steps, desc=desc, disable=not cfg.progress)
    for epoch in range(1, cfg.epochs + 1):
        epoch_loss, batches = 0.0, 0
        for loss, batch_tokens in epoch_batches(generator):
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1
            tokens += batch_tokens
            epoch_loss += loss.item()
            batches += 1
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
