"""Layer replacement: train a light module on cached (input, output) states of the pruned window.

The dense model runs once to write hidden-state pairs to safetensors shards; training then streams the
shards from disk, one at a time, so peak memory does not grow with the number of training tokens.

Modules (the paper's ablation FFN / SwiGLU / Layer, plus `linear`):
- `ffn`: the paper's FFN, checkpoint.FeedForward (d -> 4d, ReLU, 4d -> d, biases, weights normal(0,
  initializer_range), biases zero; not residual, no norm; the official MLP example, cited in checkpoint.py).
  Seeded by `training.seed`. Stored beside the pruned weights like `linear`.
- `swiglu`: the model's own MLP block with its norm(s), x + MLP(norm(x)), copied from a pruned layer (each
  family's block: families.mlp_block); stored as a decoder layer whose attention output projection is zero.
- `layer`: a whole decoder layer copied from a pruned layer (RUCKBReasoning/LLM-Streamline,
  LLM_Streamline/train_lightweightnetwork.py `init_layer`, lines 126-181: a LlamaDecoderLayer loaded from layer
  `best_layer`, the window's first; trained with MSE and AdamW(lr, weight_decay) at default betas, line 212).
- `linear`: x + W x, W = 0 at the start (this project's addition).
Which pruned layer swiglu/layer start from: `training.init_layer` (`first`, the paper), or best_fit for the
`-bestfit` kinds (their registry entry, healing_kinds.py), separate variants.
"""

from __future__ import annotations

import copy
import math
import resource
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import PreTrainedModel

from streamline.acquisition.checkpoint import EXTRA_KINDS, FeedForward, ResidualLinear, save_checkpoint
from streamline.acquisition.families import (  # causal_mask, layer_forward: re-exported (how a layer runs alone)
    attention_output,
    causal_mask,  # noqa: F401
    decoder_layers,
    initializer_std,
    layer_forward,  # noqa: F401
    mlp_block,
    mlp_block_modules,
    standalone_forward,
)
from streamline.acquisition.models import load_model, resolve_dtype
from streamline.atomic import read_json
from streamline.healing import kinds as healing_kinds
from streamline.healing.kinds import LAYER_MODULES, MODULES
from streamline.healing.pair_cache import hidden_pairs, pair_key
from streamline.healing.training import TrainConfig, fit
from streamline.importance.hidden_states import residual_states
from streamline.numerics import NonFiniteError, nonfinite_cause
from streamline.pruning.surgery import apply_plan, drop_layers

INIT_LAYERS = ("first", "best_fit")  # schema `training.init_layer`


def init_rule(healing: str, init_layer: str | None) -> str | None:
    """How `healing` picks its starting layer (its registry entry's `init`): `init_layer` (training.init_layer)
    where it follows the setting, `best_fit` for a `-bestfit` kind, None for kinds that start from no layer
    (none, linear, ffn, lora; `init_layer` may then be None)."""
    kind = healing_kinds.get(healing)
    if kind.init != "setting":
        return kind.init
    if init_layer not in INIT_LAYERS:
        raise ValueError(f"init_layer {init_layer!r} is unknown; allowed: {', '.join(INIT_LAYERS)}")
    return init_layer


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
    kind: str, model: PreTrainedModel, start: int, seed: int = 0, position: int | None = None
) -> tuple[torch.nn.Module, Callable[[torch.Tensor], torch.Tensor]]:
    """The trainable module for `kind` (a module name, healing_kinds.MODULES) and the function that applies it.

    linear/ffn are new modules (ffn's random start seeded by `seed`). layer/swiglu are a copy of decoder layer
    `start`; swiglu: its attention output projection (weight and any bias) zeroed and frozen, so the layer
    computes exactly its family's MLP block (families.mlp_block; Gemma3: x + post_ff_norm(mlp(pre_ff_norm(x))),
    OPT: x + fc2(act(fc1(final_layer_norm(x))))) and still loads as a stock decoder layer. `layer` runs as the
    compressed model will run it at `position` (default `start`; build_compressed puts it at the window's first
    place): that position's full or sliding-window mask and rotary embedding (families.standalone_forward).
    """
    if kind == "linear":
        module = ResidualLinear(model.config.hidden_size)
        return module, module
    if kind == "ffn":
        module = FeedForward(model.config.hidden_size, initializer_std(model.config), seed)
        return module, module
    if kind not in MODULES:
        raise ValueError(f"replacement {kind!r} is not trainable; trainable kinds: {', '.join(MODULES)}")
    layer = copy.deepcopy(decoder_layers(model)[start]).float()
    if kind == "layer":
        return layer, standalone_forward(model, layer, start if position is None else position)
    for param in layer.parameters():
        param.requires_grad_(False)
    for param in attention_output(layer).parameters():
        param.data.zero_()
    for sub in mlp_block_modules(layer):
        for param in sub.parameters():
            param.requires_grad_(True)
    return layer, lambda hidden: mlp_block(layer, hidden)


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
) -> tuple[int, dict[int, float]]:
    """The pruned layer a replacement module (`kind`: healing_kinds.MODULES) starts from, and each candidate's val MSE.

    `first`: the window's first layer (the paper). `best_fit`: the window layer whose module, untrained, already
    has the lowest validation MSE: on models whose window contains the layer that writes the attention-sink
    activation (SmolLM2-135M: layer 11 of 9-19) the first layer is a poor start (README, method step 3).
    Modules that copy no layer (linear, ffn) return (start, {}).
    """
    if init_layer not in INIT_LAYERS:
        raise ValueError(f"init_layer {init_layer!r} is unknown; allowed: {', '.join(INIT_LAYERS)}")
    if init_layer == "first" or kind not in LAYER_MODULES:
        return start, {}
    scores = {}
    for index in range(start, end):
        module, apply = build_replacement(kind, model, index, position=start)
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

    steps = sum(math.ceil(_shard_len(p) / cfg.batch_size) for p in train_shards)
    return fit(
        params, epoch_batches, steps, lambda: evaluate_mse(apply, val_shards, cfg.batch_size, device), cfg, "replace"
    )


def plan_window(plan: dict[str, Any], kind: str) -> tuple[int, int]:
    """(start, end) of the plan's removed window; an error for plans whose layers are not one window."""
    if plan.get("start_layer") is None:
        raise ValueError(
            f"replacement {kind!r} needs a window of consecutive layers; the plan removes {plan['removed_layers']}"
        )
    start = int(plan["start_layer"])
    return start, start + int(plan["num_layers_removed"])


def build_compressed(
    model: PreTrainedModel, plan: dict[str, Any], kind: str, trained: torch.nn.Module | None
) -> tuple[torch.nn.Module, int] | None:
    """Turn the dense `model` into the compressed one in place; returns (module, position) for `linear`/`ffn`.

    `kind` is a healing name (healing_kinds.HEALING_KINDS). `none` (and LoRA, before its training) applies the plan as it is:
    any removed layers, LaCo merges too. The replacement kinds put `trained` in place of the plan's window:
    `linear`/`ffn` as a module applied to the state entering the layer after the window (checkpoint extras), the
    decoder-layer kinds loaded into the window's first layer.
    """
    module = healing_kinds.get(kind).module
    if module is None:
        apply_plan(model, plan)
        return None
    start, end = plan_window(plan, kind)
    if module in EXTRA_KINDS:
        if not isinstance(trained, EXTRA_KINDS[module]):
            raise ValueError(f"replacement {kind!r} needs a trained {EXTRA_KINDS[module].__name__}")
        drop_layers(model, range(start, end))
        return trained, start
    if trained is None:
        raise ValueError(f"replacement {kind!r} needs a trained layer")
    layer = decoder_layers(model)[start]
    layer.load_state_dict({k: v.to(model.dtype) for k, v in trained.state_dict().items()})
    drop_layers(model, range(start + 1, end))  # the trained layer stays in the window's first place
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
    init_layer: str | None = "first",
    pair_cache: str | Path | None = None,
) -> dict[str, Any]:
    """Cache pairs, train the replacement, write the compressed checkpoint, loss curve and statistics.

    With `pair_cache` (a folder) the pairs are read from, or written to, the shared cache of pair_cache.py,
    so replacements of the same window and data run the dense model once; without it they go to a scratch
    folder under `scratch_dir` (default TMPDIR) that is removed afterwards.

    `kind` is a replacement name (healing_kinds.replacement_names()); `init_layer`: see init_rule.
    The dense model is run once in `compute_dtype` to cache the pairs; the checkpoint is then built from a
    fresh copy in the dense checkpoint's own dtype, so no precision is lost in the layers that stay.
    """
    dense_dir, out_dir = Path(dense_dir), Path(out_dir)
    manifest = read_json(dense_dir / "manifest.json")
    stats: dict[str, Any] = {"healing": kind}
    trained = None
    rule = init_rule(kind, init_layer)
    module = healing_kinds.get(kind).module
    if module is not None:
        start, end = plan_window(plan, kind)
        model, _ = load_model(dense_dir, compute_dtype, device)
        key = pair_key(dense_dir, start, end, [train_ids, val_ids], compute_dtype, device, shard_sequences)

        def compute(train_dir: Path, val_dir: Path) -> None:
            cache_pairs(model, train_ids, start, end, train_dir, shard_sequences)
            cache_pairs(model, val_ids, start, end, val_dir, shard_sequences)

        with hidden_pairs(compute, pair_cache, key, scratch_dir) as (train_shards, val_shards, reused):
            stats["pairs_reused"] = reused
            source, candidates = pick_init_layer(
                module, model, start, end, rule or "first", val_shards, cfg.batch_size, device
            )
            trained, apply = build_replacement(module, model, source, seed=cfg.seed, position=start)
            del model
            trained.to(device)
            stats["replacement"] = module
            stats["init_rule"] = rule
            stats["init_layer"] = source if rule else None
            stats["init_val_loss_by_layer"] = candidates
            stats["val_loss_identity"] = evaluate_mse(lambda h: h, val_shards, cfg.batch_size, device)
            stats.update(train_replacement(trained, apply, train_shards, val_shards, cfg))
        trained.cpu()
    model, tokenizer = load_model(dense_dir, resolve_dtype(manifest["dtype"]), "cpu")
    extra = build_compressed(model, plan, kind, trained)
    save_checkpoint(model, tokenizer, out_dir, extra=extra)
    stats["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return stats
