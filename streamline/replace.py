"""Layer replacement: train a light module on cached (input, output) states of the pruned window.

The dense model runs once to write hidden-state pairs to safetensors shards; training then streams the
shards from disk, one at a time, so peak memory does not grow with the number of training tokens.
"""

from __future__ import annotations

import copy
import math
import resource
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm import tqdm
from transformers import PreTrainedModel, get_cosine_schedule_with_warmup

from streamline.atomic import read_json
from streamline.checkpoint import ResidualLinear
from streamline.hidden_states import decoder_layers, residual_states
from streamline.prune import REPLACEMENTS, keep_layers

TRAINED_KINDS = ("linear", "ffn", "swiglu", "layer")


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 5
    batch_size: int = 8
    lr: float = 2e-4  # the paper's code
    weight_decay: float = 1e-3  # the paper's code
    warmup_ratio: float = 0.1
    seed: int = 0
    progress: bool = True


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
            raise FloatingPointError(f"hidden states of layers {start}..{end - 1} contain NaN/inf; use a wider dtype")
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


def causal_mask(seq_len: int, dtype: torch.dtype) -> torch.Tensor:
    """Additive (1, 1, T, T) causal mask: works for eager and SDPA attention alike."""
    mask = torch.full((seq_len, seq_len), torch.finfo(dtype).min, dtype=dtype).triu(1)
    return mask[None, None]


def mlp_block(layer: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """x + MLP(norm(x)): the decoder layer's feed-forward half alone."""
    return hidden + layer.mlp(layer.post_attention_layernorm(hidden))


def layer_forward(layer: torch.nn.Module, rotary: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """Run a full decoder layer on whole sequences starting at position 0, with the causal mask."""

    def forward(hidden: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(hidden.shape[1], device=hidden.device)[None].expand(hidden.shape[0], -1)
        return layer(
            hidden,
            attention_mask=causal_mask(hidden.shape[1], hidden.dtype).to(hidden.device),
            position_ids=positions,
            position_embeddings=rotary(hidden, positions),
        )

    return forward


def build_replacement(
    kind: str, model: PreTrainedModel, start: int
) -> tuple[torch.nn.Module, Callable[[torch.Tensor], torch.Tensor]]:
    """The trainable module for `kind` and the function that applies it to a residual state.

    ffn/swiglu: a copy of the first pruned layer with its attention output projection zeroed and frozen,
    so the layer computes exactly x + MLP(norm(x)) and still loads as a stock decoder layer.
    """
    if kind == "linear":
        module = ResidualLinear(model.config.hidden_size)
        return module, module
    if kind not in TRAINED_KINDS:
        raise ValueError(f"replacement {kind!r} is not trainable; trainable kinds: {', '.join(TRAINED_KINDS)}")
    layer = copy.deepcopy(decoder_layers(model)[start]).float()
    if kind == "layer":
        rotary = copy.deepcopy(model.model.rotary_emb).float()
        return layer, layer_forward(layer, rotary)
    o_proj = layer.self_attn.o_proj
    for param in layer.parameters():
        param.requires_grad_(False)
    for param in o_proj.parameters():
        param.data.zero_()
    for sub in (layer.mlp, layer.post_attention_layernorm):
        for param in sub.parameters():
            param.requires_grad_(True)
    return layer, lambda hidden: mlp_block(layer, hidden)


@torch.no_grad()
def evaluate_mse(
    apply: Callable[[torch.Tensor], torch.Tensor], shards: list[Path], batch_size: int, device: str | torch.device = "cpu"
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


def train_replacement(
    module: torch.nn.Module,
    apply: Callable[[torch.Tensor], torch.Tensor],
    train_shards: list[Path],
    val_shards: list[Path],
    cfg: TrainConfig,
) -> dict[str, Any]:
    """AdamW + cosine schedule with warm-up on MSE; keeps the weights with the best validation loss.

    Returns the loss curve (one row per epoch, epoch 0 = before training) and run statistics.
    """
    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = sum(math.ceil(_shard_len(p) / cfg.batch_size) for p in train_shards)
    total_steps = steps_per_epoch * cfg.epochs
    scheduler = get_cosine_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * total_steps), total_steps)
    device = _device_of(module)
    best_val = evaluate_mse(apply, val_shards, cfg.batch_size, device)
    best_state = copy.deepcopy(module.state_dict())
    curve = [{"epoch": 0, "step": 0, "train_loss": float("nan"), "val_loss": best_val, "lr": 0.0}]
    tokens, step, started = 0, 0, time.perf_counter()
    bar = tqdm(total=total_steps, desc="replace", disable=not cfg.progress)
    for epoch in range(1, cfg.epochs + 1):
        module.train()
        epoch_loss, epoch_batches = 0.0, 0
        for shard_idx in torch.randperm(len(train_shards), generator=generator).tolist():
            h_in, h_out = _read_shard(train_shards[shard_idx], device)
            order = torch.randperm(h_in.shape[0], generator=generator)
            for lo in range(0, len(order), cfg.batch_size):
                idx = order[lo : lo + cfg.batch_size].to(device)
                loss = torch.nn.functional.mse_loss(apply(h_in[idx]), h_out[idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                step += 1
                tokens += idx.numel() * h_in.shape[1]
                epoch_loss += loss.item()
                epoch_batches += 1
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.4g}")
        module.eval()
        val = evaluate_mse(apply, val_shards, cfg.batch_size, device)
        curve.append(
            {
                "epoch": epoch,
                "step": step,
                "train_loss": epoch_loss / max(epoch_batches, 1),
                "val_loss": val,
                "lr": scheduler.get_last_lr()[0],
            }
        )
        if val < best_val:
            best_val, best_state = val, copy.deepcopy(module.state_dict())
    bar.close()
    module.load_state_dict(best_state)
    return {
        "curve": curve,
        "best_val_loss": best_val,
        "train_seconds": time.perf_counter() - started,
        "tokens_seen": tokens,
        "steps": step,
        "trainable_params": sum(p.numel() for p in params),
    }


def build_compressed(
    model: PreTrainedModel, plan: dict[str, Any], kind: str, trained: torch.nn.Module | None
) -> tuple[ResidualLinear, int] | None:
    """Turn the dense `model` into the compressed one in place; returns (map, position) for `linear`."""
    if kind not in REPLACEMENTS:
        raise ValueError(f"replacement {kind!r} is unknown; allowed: {', '.join(REPLACEMENTS)}")
    start, n = int(plan["start_layer"]), int(plan["num_layers_removed"])
    num_layers = len(decoder_layers(model))
    window = set(range(start, start + n))
    if kind in ("none", "linear"):
        keep = [j for j in range(num_layers) if j not in window]
    else:
        if trained is None:
            raise ValueError(f"replacement {kind!r} needs a trained layer")
        layer = decoder_layers(model)[start]
        layer.load_state_dict({k: v.to(model.dtype) for k, v in trained.state_dict().items()})
        keep = [j for j in range(num_layers) if j not in window or j == start]
    keep_layers(model, keep)
    if kind == "linear":
        if not isinstance(trained, ResidualLinear):
            raise ValueError("replacement 'linear' needs a trained ResidualLinear")
        return trained, start
    return None


def run_replacement(
    dense_dir: str | Path,
    plan: dict[str, Any],
    kind: str,
    train_ids: torch.Tensor,
    val_ids: torch.Tensor,
    out_dir: str | Path,
    *,
    cfg: TrainConfig,
    shard_sequences: int,
    device: str,
    compute_dtype: torch.dtype,
    scratch_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Cache pairs, train the replacement, write the compressed checkpoint, loss curve and statistics.

    The dense model is run once in `compute_dtype` to cache the pairs; the checkpoint is then built from a
    fresh copy in the dense checkpoint's own dtype, so no precision is lost in the layers that stay.
    """
    from streamline.checkpoint import save_checkpoint
    from streamline.models import load_model, resolve_dtype

    dense_dir, out_dir = Path(dense_dir), Path(out_dir)
    manifest = read_json(dense_dir / "manifest.json")
    start = int(plan["start_layer"])
    end = start + int(plan["num_layers_removed"])
    stats: dict[str, Any] = {"replacement": kind, "start_layer": start, "end_layer": end}
    trained = None
    if kind != "none":
        model, _ = load_model(dense_dir, compute_dtype, device)
        with tempfile.TemporaryDirectory(prefix="streamline-pairs-", dir=scratch_dir) as scratch:
            train_shards = cache_pairs(model, train_ids, start, end, Path(scratch) / "train", shard_sequences)
            val_shards = cache_pairs(model, val_ids, start, end, Path(scratch) / "val", shard_sequences)
            trained, apply = build_replacement(kind, model, start)
            del model
            trained.to(device)
            stats["val_loss_identity"] = evaluate_mse(lambda h: h, val_shards, cfg.batch_size, device)
            stats.update(train_replacement(trained, apply, train_shards, val_shards, cfg))
        trained.cpu()
    model, tokenizer = load_model(dense_dir, resolve_dtype(manifest["dtype"]), "cpu")
    linear = build_compressed(model, plan, kind, trained)
    save_checkpoint(model, tokenizer, out_dir, linear=linear)
    stats["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return stats
