"""Layer replacement: train a light module on cached (input, output) states of the pruned window.

The dense model runs once to write hidden-state pairs to safetensors shards; training then streams the
shards from disk, one at a time, so peak memory does not grow with the number of training tokens.

The modules (the paper's ablation FFN / SwiGLU / Layer, plus `linear`) are modules.py's registry; which pruned layer
swiglu/layer start from: `training.init_layer` (`first`, the paper), or best_fit for the `-bestfit` kinds (their
registry entry, kinds.py), separate variants. The loop is training.fit with the job's recipe (recipes.py; the
official MSE training, RUCKBReasoning/LLM-Streamline train_lightweightnetwork.py lines 211-258, and what stays
different: docs/deviations.md).
"""

from __future__ import annotations

import math
import resource
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import PreTrainedModel

from streamline.acquisition.checkpoint import EXTRA_KINDS, save_checkpoint
from streamline.acquisition.families import decoder_layers
from streamline.acquisition.models import load_model, resolve_dtype
from streamline.atomic import read_json
from streamline.healing import kinds as healing_kinds
from streamline.healing import modules
from streamline.healing.job import INIT_LAYERS, HealingJob
from streamline.healing.pair_cache import hidden_pairs, pair_key
from streamline.healing.training import TrainConfig, fit
from streamline.importance.hidden_states import residual_states
from streamline.numerics import NonFiniteError, nonfinite_cause
from streamline.pruning.surgery import apply_plan, drop_layers


def cache_pairs(
    model: PreTrainedModel, input_ids: torch.Tensor, start: int, end: int, out_dir: str | Path, shard_sequences: int
) -> list[Path]:
    """Write (h_in = h_start, h_out = h_end) for every sequence to shards of `shard_sequences` sequences."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    shards = []
    for k, lo in enumerate(range(0, input_ids.shape[0], shard_sequences)):
        states = residual_states(model, input_ids[lo : lo + shard_sequences], upto=end)
        h_in, h_out = states[start], states[end]
        if not (torch.isfinite(h_in).all() and torch.isfinite(h_out).all()):
            raise NonFiniteError(
                f"the hidden states entering/leaving layers {start}..{end - 1} hold NaN/Inf "
                f"({nonfinite_cause(h_in.dtype)})"
            )
        path = out_dir / f"shard_{k:05d}.safetensors"
        save_file({"h_in": h_in.contiguous().cpu(), "h_out": h_out.contiguous().cpu()}, path)
        shards.append(path)
    return shards


def _shard_len(path: Path) -> int:
    with safe_open(str(path), framework="pt") as fh:
        return fh.get_slice("h_in").get_shape()[0]


def _read_shard(path: Path, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    with safe_open(str(path), framework="pt") as fh:
        return fh.get_tensor("h_in").to(device).float(), fh.get_tensor("h_out").to(device).float()


def _device_of(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device


def build_replacement(
    kind: str, model: PreTrainedModel, start: int, seed: int = 0, position: int | None = None, attention: str = "causal"
) -> tuple[torch.nn.Module, Callable[[torch.Tensor], torch.Tensor]]:
    """The trainable module `kind` (a module name, modules.MODULES) started from pruned layer `start` where it
    copies one, run at `position` (default `start`), and the function that applies it (modules.WindowModule.build)."""
    return modules.get(kind).build(model, start, start if position is None else position, seed, attention)


@torch.no_grad()
def evaluate_mse(
    apply: Callable[[torch.Tensor], torch.Tensor],
    shards: list[Path],
    batch_size: int,
    device: str | torch.device = "cpu",
) -> float:
    """Mean squared error of apply(h_in) against h_out over every element of `shards`."""
    total, count = 0.0, 0
    for path in shards:
        h_in, h_out = _read_shard(path, device)
        for lo in range(0, h_in.shape[0], batch_size):
            pred = apply(h_in[lo : lo + batch_size])
            total += torch.nn.functional.mse_loss(pred, h_out[lo : lo + batch_size], reduction="sum").item()
            count += h_out[lo : lo + batch_size].numel()
    return total / count


def pick_init_layer(
    kind: str,
    model: PreTrainedModel,
    start: int,
    end: int,
    init_layer: str,
    val_shards: list[Path],
    batch_size: int,
    device: str | torch.device,
    attention: str = "causal",
) -> tuple[int, dict[int, float]]:
    """The pruned layer a replacement module (`kind`: modules.MODULES) starts from, and each candidate's val MSE.

    `first`: the window's first layer (the paper). `best_fit`: the window layer whose module, untrained, already
    has the lowest validation MSE: on models whose window contains the layer that writes the attention-sink
    activation (SmolLM2-135M: layer 11 of 9-19) the first layer is a poor start (README, method step 3).
    Modules that copy no layer (linear, ffn) return (start, {}).
    """
    if init_layer not in INIT_LAYERS:
        raise ValueError(f"init_layer {init_layer!r} is unknown; allowed: {', '.join(INIT_LAYERS)}")
    if init_layer == "first" or not modules.get(kind).copies_layer:
        return start, {}
    scores = {}
    for index in range(start, end):
        module, apply = build_replacement(kind, model, index, position=start, attention=attention)
        module.to(device)
        scores[index] = evaluate_mse(apply, val_shards, batch_size, device)
    return min(scores, key=scores.get), scores


def train_replacement(
    module: torch.nn.Module,
    apply: Callable[[torch.Tensor], torch.Tensor],
    train_shards: list[Path],
    val_shards: list[Path],
    cfg: TrainConfig,
) -> dict[str, Any]:
    """MSE between apply(h_in) and h_out, streaming the shards; returns the loss curve and run statistics."""
    device = _device_of(module)
    params = [p for p in module.parameters() if p.requires_grad]

    def epoch_batches(generator: torch.Generator):
        module.train()
        for shard_idx in torch.randperm(len(train_shards), generator=generator).tolist():
            h_in, h_out = _read_shard(train_shards[shard_idx], device)
            order = torch.randperm(h_in.shape[0], generator=generator)
            for lo in range(0, len(order), cfg.batch_size):
                idx = order[lo : lo + cfg.batch_size].to(device)
                yield torch.nn.functional.mse_loss(apply(h_in[idx]), h_out[idx]), idx.numel() * h_in.shape[1]
        module.eval()

    batches = sum(math.ceil(_shard_len(p) / cfg.batch_size) for p in train_shards)
    return fit(
        params, epoch_batches, batches, lambda: evaluate_mse(apply, val_shards, cfg.batch_size, device), cfg, "replace"
    )


@contextmanager
def window_pairs(job: HealingJob, model: PreTrainedModel) -> Iterator[tuple[list[Path], list[Path], bool]]:
    """(train shards, val shards, reused) of the job's window and data: from the shared pair cache (pair_cache.py),
    or written there (or to a scratch folder without a cache) by one pass of `model` over the job's windows."""
    start, end = job.window
    shards = job.caches.shard_sequences
    ids = [job.train_ids, job.val_ids]
    key = pair_key(job.dense_dir, start, end, ids, job.runtime.compute_dtype, job.runtime.device, shards)

    def compute(train_dir: Path, val_dir: Path) -> None:
        cache_pairs(model, job.train_ids, start, end, train_dir, shards)
        cache_pairs(model, job.val_ids, start, end, val_dir, shards)

    with hidden_pairs(compute, job.caches.pair_cache, key, job.caches.scratch_dir) as pairs:
        yield pairs


def build_compressed(
    model: PreTrainedModel, plan: dict[str, Any], healing: str, trained: torch.nn.Module | None
) -> tuple[torch.nn.Module, int] | None:
    """Turn the dense `model` into the compressed one in place; returns (module, position) for a stored extra.

    `healing` is a registered kind's name (kinds.HEALING_KINDS). A kind without a module (`none`, and LoRA before its
    training) applies the plan as it is: any removed layers, LaCo merges too. The others put `trained` in place of
    the plan's window: an extra (`linear`/`ffn`) as a module applied to the state entering the layer after the
    window (checkpoint extras), a decoder-layer module loaded into the window's first layer.
    """
    kind = healing_kinds.get(healing)
    if kind.module is None:
        apply_plan(model, plan)
        return None
    start, end = HealingJob(kind, plan, Path(), Path()).window
    extra = modules.get(kind.module).extra
    if extra is not None:
        if not isinstance(trained, EXTRA_KINDS[extra]):
            raise ValueError(f"healing {healing!r} needs a trained {EXTRA_KINDS[extra].__name__}")
        drop_layers(model, range(start, end))
        return trained, start
    if trained is None:
        raise ValueError(f"healing {healing!r} needs a trained layer")
    layer = decoder_layers(model)[start]
    layer.load_state_dict({k: v.to(model.dtype) for k, v in trained.state_dict().items()})
    drop_layers(model, range(start + 1, end))  # the trained layer stays in the window's first place
    return None


def save_healed(
    job: HealingJob, trained: torch.nn.Module | None, edit: Callable[[PreTrainedModel], None] | None = None
) -> None:
    """The compressed checkpoint of `job` in `job.out_dir`, built from a fresh copy of the dense weights in their own
    dtype (no precision lost in the layers that stay): `edit` applied to the dense copy first (a fit's fused map),
    then `trained` put in place of the window (build_compressed)."""
    dtype = resolve_dtype(read_json(job.dense_dir / "manifest.json")["dtype"])
    model, tokenizer = load_model(job.dense_dir, dtype, "cpu")
    if edit is not None:
        edit(model)
    extra = build_compressed(model, job.plan, job.healing, trained)
    save_checkpoint(model, tokenizer, job.out_dir, extra=extra)


def train_pairs(job: HealingJob) -> dict[str, Any]:
    """Cache pairs, train the kind's module on them, write the compressed checkpoint; returns the loss curve and
    statistics (the start layer chosen, each candidate's untrained MSE, the identity's MSE, time, tokens, memory).

    The dense model runs once in the job's compute dtype to cache the pairs (or not at all when the shared cache
    holds them: `pairs_reused`); the checkpoint is then built from a fresh copy in the dense checkpoint's own dtype.
    """
    cfg = job.cfg
    device = job.runtime.device
    rule = job.init_rule
    module = job.kind.module
    start, end = job.window
    model, _ = load_model(job.dense_dir, job.runtime.compute_dtype, device)
    stats: dict[str, Any] = {"healing": job.healing}
    with window_pairs(job, model) as (train_shards, val_shards, reused):
        stats["pairs_reused"] = reused
        source, candidates = pick_init_layer(
            module, model, start, end, rule or "first", val_shards, cfg.batch_size, device, cfg.attention
        )
        trained, apply = build_replacement(module, model, source, cfg.seed, start, cfg.attention)
        del model
        trained.to(device)
        stats["module"] = module
        stats["init_rule"] = rule
        stats["init_layer"] = source if rule else None
        stats["init_val_loss_by_layer"] = candidates
        stats["val_loss_identity"] = evaluate_mse(lambda h: h, val_shards, cfg.batch_size, device)
        stats.update(train_replacement(trained, apply, train_shards, val_shards, cfg))
    trained.cpu()
    save_healed(job, trained)
    stats["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return stats
