"""Healing with the language-modelling loss: LoRA on the pruned model, and `lm-loss` (the official code's
end-to-end variant). Both keep float32 weights and train on next-token loss over the `training.dataset` windows
(the replacement's training windows: training.samples x seq_len tokens, training.epochs epochs, best epoch on
the training.val_samples held-out windows kept); with a bf16/fp16 compute dtype the forward and backward passes run
under autocast (the whole model runs every step: ~1.5x faster on CPU, more on GPU). The result is a stock
checkpoint.

`lm-loss` follows RUCKBReasoning/LLM-Streamline, LLM_Streamline/train_llmloss.py: the pruned model keeps decoder
layer `best_layer` (the window's first) and drops the rest of the window (`prune_model`, lines 23-81); every
parameter whose name contains `layers.{best_layer}` trains, the rest is frozen (lines 125-129), i.e. one whole
decoder layer; AdamW(lr 2e-4, weight_decay 1e-3, betas (0.9, 0.95)) (line 135; args.py lines 42-43); best
validation loss kept (lines 166-170). Deliberate deviations: the layer's start follows `training.init_layer` like
the `layer` replacement (`first` = the official code); the trainable layer is selected by index, not by the
substring `layers.{i}` (which for i = 1 would also match layers 10-19); the schedule is this project's cosine
schedule with `training.warmup_ratio` decaying to 0 over all steps (the official one warms up for 1% of the steps,
reaches min_lr 5e-5 at half of them, lines 137-143); the data are `training.dataset` windows, not SlimPajama
(lines 114-115); float32 weights, autocast instead of accelerate's bf16 mixed precision.

LoRA follows shortened-llm (Nota-NetsPresso/shortened-llm, src/lora_retrain.py lines 308-316: r 8, alpha 16,
dropout 0.05, q/k/v/o/gate/down/up); deviation: it trains on `training.dataset` windows with the next-token loss
over every token, not on Alpaca instructions (script/prune_llama2-7b_crit-ppl.sh line 27).

`last-layers` (last_layers.py cites yaolu-zjut/Navigation-LLM-layer-pruning and lists its deviations) trains the
pruned model's last k kept layers, final norm and LM head with the same LM loop; the closed-form fits (ReplaceMe,
LinearPatch) are fit.py's, dispatched from run_healing.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel

from streamline.acquisition.checkpoint import save_checkpoint
from streamline.acquisition.families import decoder_layers, lora_targets
from streamline.acquisition.models import dtype_name, load_model, resolve_dtype
from streamline.atomic import read_json
from streamline.healing import kinds as healing_kinds
from streamline.healing.fit import run_fit
from streamline.healing.last_layers import LAST_LAYERS_DEFAULT, unfreeze_last_layers
from streamline.healing.replace import (
    build_compressed,
    build_replacement,
    cache_pairs,
    init_rule,
    pick_init_layer,
    plan_window,
    run_replacement,
)
from streamline.healing.training import TrainConfig, fit
from streamline.scratch import shard_scratch

LM_LOSS_BETAS = (0.9, 0.95)  # train_llmloss.py line 135
# The schema's `lora` defaults (schemas/config.schema.yaml; a test keeps the two equal), for direct library calls.
LORA_DEFAULTS = {
    "rank": 8,
    "alpha": 16,
    "dropout": 0.05,
    "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
}


@torch.no_grad()
def mean_lm_loss(model: PreTrainedModel, ids: torch.Tensor, batch_size: int) -> float:
    """Token-weighted next-token loss over `ids`."""
    model.eval()
    total, count = 0.0, 0
    for batch in ids.split(batch_size):
        batch = batch.to(model.device)
        tokens = batch[:, 1:].numel()
        total += model(batch, labels=batch, use_cache=False).loss.item() * tokens
        count += tokens
    return total / count


def _autocast(model: PreTrainedModel, compute_dtype: torch.dtype) -> torch.autocast:
    """Mixed precision for a float32 model: matmuls in `compute_dtype`, weights and optimizer state in float32."""
    return torch.autocast(model.device.type, dtype=compute_dtype, enabled=compute_dtype != torch.float32)


def train_lm(
    model: PreTrainedModel,
    params: list[torch.nn.Parameter],
    train_ids: torch.Tensor,
    val_ids: torch.Tensor,
    cfg: TrainConfig,
    desc: str,
    compute_dtype: torch.dtype = torch.float32,
) -> dict[str, Any]:
    """Train `params` (the rest of `model` frozen) on next-token loss; best validation epoch kept."""

    def epoch_batches(generator: torch.Generator):
        model.train()
        order = torch.randperm(train_ids.shape[0], generator=generator)
        for lo in range(0, len(order), cfg.batch_size):
            batch = train_ids[order[lo : lo + cfg.batch_size]].to(model.device)
            with _autocast(model, compute_dtype):
                loss = model(batch, labels=batch, use_cache=False).loss
            yield loss, batch.numel()
        model.eval()

    def validate() -> float:
        with _autocast(model, compute_dtype):
            return mean_lm_loss(model, val_ids, cfg.batch_size)

    steps = math.ceil(train_ids.shape[0] / cfg.batch_size)
    stats = fit(params, epoch_batches, steps, validate, cfg, desc)
    stats["compute_dtype"] = dtype_name(compute_dtype)
    return stats


def _freeze(model: torch.nn.Module) -> None:
    for param in model.parameters():
        param.requires_grad_(False)


def lora_heal(
    model: PreTrainedModel,
    train_ids: torch.Tensor,
    val_ids: torch.Tensor,
    cfg: TrainConfig,
    lora: dict[str, Any],
    compute_dtype: torch.dtype = torch.float32,
) -> tuple[PreTrainedModel, dict[str, Any]]:
    """peft LoRA on the pruned model; returns the model with the adapters merged in, and run statistics."""
    from peft import LoraConfig, get_peft_model

    settings = {**LORA_DEFAULTS, **lora}
    targets = lora_targets(model, list(settings["target_modules"]))  # the family's names (families.py)
    _freeze(model)
    peft_model = get_peft_model(
        model,
        LoraConfig(
            r=settings["rank"],
            lora_alpha=settings["alpha"],
            lora_dropout=settings["dropout"],
            target_modules=targets,
            task_type="CAUSAL_LM",
        ),
    )
    params = [p for p in peft_model.parameters() if p.requires_grad]
    stats = train_lm(peft_model, params, train_ids, val_ids, cfg, "lora", compute_dtype)
    stats["lora"] = {**settings, "resolved_targets": targets}
    return peft_model.merge_and_unload(), stats


def last_layers_heal(
    model: PreTrainedModel,
    train_ids: torch.Tensor,
    val_ids: torch.Tensor,
    cfg: TrainConfig,
    k: int = LAST_LAYERS_DEFAULT,
    compute_dtype: torch.dtype = torch.float32,
) -> dict[str, Any]:
    """Train the last `k` layers, final norm and LM head of the pruned `model` on next-token loss (in place;
    last_layers.py cites the official partial fine-tuning). Returns training.fit's statistics (loss curve, train
    seconds, tokens seen, peak RSS, trainable parameters) plus the trainable parameter names; the rest stays frozen.
    """
    names = unfreeze_last_layers(model, k)
    params = [param for param in model.parameters() if param.requires_grad]
    stats = train_lm(model, params, train_ids, val_ids, cfg, f"last {k} layers", compute_dtype)
    _freeze(model)
    return {**stats, "method": "last_layers", "last_layers": k, "trainable_names": names}


def lm_loss_start(
    model: PreTrainedModel,
    plan: dict[str, Any],
    val_ids: torch.Tensor,
    init_layer: str,
    batch_size: int,
    shard_sequences: int,
    scratch_dir: str | Path | None = None,
) -> tuple[int, dict[int, float]]:
    """The window layer lm-loss starts from, as the `layer` replacement picks it (best_fit: val pairs cached)."""
    start, end = plan_window(plan, "lm-loss")
    if init_layer == "first":
        return start, {}
    with shard_scratch(scratch_dir) as scratch:
        val_shards = cache_pairs(model, val_ids, start, end, Path(scratch) / "val", shard_sequences)
        return pick_init_layer("layer", model, start, end, init_layer, val_shards, batch_size, str(model.device))


def lm_loss_model(model: PreTrainedModel, plan: dict[str, Any], source: int) -> list[torch.nn.Parameter]:
    """Turn the dense `model` into the pruned one with decoder layer `source` in place of the window (the `layer`
    replacement, untrained); freeze everything but that layer and return its parameters."""
    replacement, _ = build_replacement("layer", model, source)
    build_compressed(model, plan, "lm-loss", replacement)
    _freeze(model)
    params = list(decoder_layers(model)[int(plan["start_layer"])].parameters())
    for param in params:
        param.requires_grad_(True)
    return params


def lm_loss_heal(
    model: PreTrainedModel,
    plan: dict[str, Any],
    train_ids: torch.Tensor,
    val_ids: torch.Tensor,
    cfg: TrainConfig,
    compute_dtype: torch.dtype = torch.float32,
    init_layer: str = "first",
    shard_sequences: int = 16,
    scratch_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Put one decoder layer in place of the window and train only it with the LM loss, AdamW betas (0.9, 0.95)."""
    source, candidates = lm_loss_start(
        model, plan, val_ids, init_layer, cfg.batch_size, shard_sequences, scratch_dir
    )
    params = lm_loss_model(model, plan, source)
    stats = train_lm(model, params, train_ids, val_ids, replace(cfg, betas=LM_LOSS_BETAS), "lm-loss", compute_dtype)
    return {
        "replacement": "layer",
        "init_rule": init_layer,
        "init_layer": source,
        "init_val_loss_by_layer": candidates,
        "betas": list(LM_LOSS_BETAS),
        **stats,
    }


def run_healing(
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
    lora: dict[str, Any] | None = None,
    init_layer: str | None = "first",
    pair_cache: str | Path | None = None,
) -> dict[str, Any]:
    """Build the compressed checkpoint for any healing kind; returns training statistics (empty for none).

    `pair_cache`: the folder of shared hidden-state pairs (pair_cache.py) the replacements read or fill.
    """
    healing = healing_kinds.get(kind)
    if healing.trains == "fit":  # a closed-form fit over the training windows (fit.py)
        return run_fit(
            dense_dir,
            plan,
            kind,
            train_ids,
            val_ids,
            out_dir,
            batch_size=cfg.batch_size,
            seed=cfg.seed,
            shard_sequences=shard_sequences,
            device=device,
            compute_dtype=compute_dtype,
            scratch_dir=scratch_dir,
            pair_cache=pair_cache,
        )
    if healing.trains != "lm":  # nothing, or a module trained on cached pairs
        return run_replacement(
            dense_dir,
            plan,
            kind,
            train_ids,
            val_ids,
            out_dir,
            cfg=cfg,
            shard_sequences=shard_sequences,
            device=device,
            compute_dtype=compute_dtype,
            scratch_dir=scratch_dir,
            init_layer=init_layer,
            pair_cache=pair_cache,
        )
    dense_dir = Path(dense_dir)
    save_dtype = resolve_dtype(read_json(dense_dir / "manifest.json")["dtype"])
    model, tokenizer = load_model(dense_dir, torch.float32, device)
    if healing.module is None and healing.lora:  # lora: adapters on the pruned model
        build_compressed(model, plan, "none", None)
        model, stats = lora_heal(model, train_ids, val_ids, cfg, lora or {}, compute_dtype)
    elif healing.module is None:  # last-layers: the pruned model's last k layers, final norm and LM head
        build_compressed(model, plan, "none", None)
        stats = last_layers_heal(model, train_ids, val_ids, cfg, healing.last_layers, compute_dtype)
    else:  # lm-loss: the window's module trained inside the pruned model
        rule = init_rule(kind, init_layer)
        stats = lm_loss_heal(
            model, plan, train_ids, val_ids, cfg, compute_dtype, rule, shard_sequences, scratch_dir
        )
    _freeze(model)
    model.to(device="cpu", dtype=save_dtype)
    save_checkpoint(model, tokenizer, out_dir)
    return {"healing": kind, **stats}
