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
validation loss kept (lines 166-170); its schedule and accumulation under `training.recipe: official` (recipes.py).
Deviations (start layer, selection by index, schedule, data, precision): docs/deviations.md.

LoRA follows shortened-llm (Nota-NetsPresso/shortened-llm, src/lora_retrain.py lines 308-316: r 8, alpha 16,
dropout 0.05, q/k/v/o/gate/down/up); deviation: it trains on `training.dataset` windows with the next-token loss
over every token, not on Alpaca instructions (script/prune_llama2-7b_crit-ppl.sh line 27), with the project's loop
under either recipe.

`last-layers` (last_layers.py cites yaolu-zjut/Navigation-LLM-layer-pruning) trains the pruned model's last k kept
layers, final norm and LM head with the same LM loop (its official recipe: recipes.py); the closed-form fits
(ReplaceMe, LinearPatch) are fit.py's. heal.py dispatches a job here by its kind's `trains` ("lm").
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
from streamline.healing.job import HealingJob
from streamline.healing.last_layers import LAST_LAYERS_DEFAULT, unfreeze_last_layers
from streamline.healing.replace import build_compressed, build_replacement, cache_pairs, pick_init_layer
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

    batches = math.ceil(train_ids.shape[0] / cfg.batch_size)
    stats = fit(params, epoch_batches, batches, validate, cfg, desc)
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


def lm_loss_start(model: PreTrainedModel, job: HealingJob) -> tuple[int, dict[int, float]]:
    """The window layer lm-loss starts from, as the `layer` replacement picks it (best_fit: val pairs cached)."""
    start, end = job.window
    rule = job.init_rule
    if rule == "first":
        return start, {}
    with shard_scratch(job.caches.scratch_dir) as scratch:
        val_shards = cache_pairs(model, job.val_ids, start, end, Path(scratch) / "val", job.caches.shard_sequences)
        return pick_init_layer("layer", model, start, end, rule, val_shards, job.cfg.batch_size, str(model.device))


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


def lm_loss_heal(model: PreTrainedModel, job: HealingJob) -> dict[str, Any]:
    """Put one decoder layer in place of the job's window and train only it with the LM loss, AdamW betas (0.9, 0.95)."""
    source, candidates = lm_loss_start(model, job)
    params = lm_loss_model(model, job.plan, source)
    cfg = replace(job.cfg, betas=LM_LOSS_BETAS)
    stats = train_lm(model, params, job.train_ids, job.val_ids, cfg, "lm-loss", job.runtime.compute_dtype)
    return {
        "module": "layer",
        "init_rule": job.init_rule,
        "init_layer": source,
        "init_val_loss_by_layer": candidates,
        "betas": list(LM_LOSS_BETAS),
        **stats,
    }


def train_lm_healing(job: HealingJob) -> dict[str, Any]:
    """Heal with the LM loss and write the stock checkpoint: LoRA adapters merged into the pruned model, the last k
    layers (with final norm and head) of the pruned model, or lm-loss's layer in place of the window. Weights train
    in float32 (autocast in the job's compute dtype) and are saved in the dense checkpoint's dtype."""
    kind, compute_dtype = job.kind, job.runtime.compute_dtype
    save_dtype = resolve_dtype(read_json(job.dense_dir / "manifest.json")["dtype"])
    model, tokenizer = load_model(job.dense_dir, torch.float32, job.runtime.device)
    if kind.module is None and kind.lora:  # lora: adapters on the pruned model
        build_compressed(model, job.plan, "none", None)
        model, stats = lora_heal(model, job.train_ids, job.val_ids, job.cfg, job.lora, compute_dtype)
    elif kind.module is None:  # last-layers: the pruned model's last k layers, final norm and LM head
        build_compressed(model, job.plan, "none", None)
        stats = last_layers_heal(model, job.train_ids, job.val_ids, job.cfg, kind.last_layers, compute_dtype)
    else:  # lm-loss: the window's module trained inside the pruned model
        stats = lm_loss_heal(model, job)
    _freeze(model)
    model.to(device="cpu", dtype=save_dtype)
    save_checkpoint(model, tokenizer, job.out_dir)
    return {"healing": job.healing, **stats}
