"""Healing with the language-modelling loss: LoRA on the pruned model, and `lm-loss` (an ffn replacement
trained end to end, the official code's variant). Both keep float32 weights and train on next-token loss over
the same token budget as the replacement (training.samples x seq_len x epochs); with a bf16/fp16 compute dtype the
forward and backward passes run under autocast (the whole model runs every step: ~1.5x faster on CPU, more on GPU).
The result is merged into a stock checkpoint.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel

from streamline.atomic import read_json
from streamline.checkpoint import save_checkpoint
from streamline.hidden_states import decoder_layers
from streamline.models import load_model, resolve_dtype
from streamline.replace import build_compressed, build_replacement, run_replacement
from streamline.training import TrainConfig, fit

LORA_DEFAULTS = {
    "rank": 8,
    "alpha": 16,
    "dropout": 0.0,
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
    stats["compute_dtype"] = str(compute_dtype).removeprefix("torch.")
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
    _freeze(model)
    peft_model = get_peft_model(
        model,
        LoraConfig(
            r=settings["rank"],
            lora_alpha=settings["alpha"],
            lora_dropout=settings["dropout"],
            target_modules=list(settings["target_modules"]),
            task_type="CAUSAL_LM",
        ),
    )
    params = [p for p in peft_model.parameters() if p.requires_grad]
    stats = train_lm(peft_model, params, train_ids, val_ids, cfg, "lora", compute_dtype)
    stats["lora"] = settings
    return peft_model.merge_and_unload(), stats


def lm_loss_heal(
    model: PreTrainedModel,
    plan: dict[str, Any],
    train_ids: torch.Tensor,
    val_ids: torch.Tensor,
    cfg: TrainConfig,
    compute_dtype: torch.dtype = torch.float32,
) -> dict[str, Any]:
    """Put an ffn replacement (initialised from the first pruned layer) in the window and train only it."""
    start = int(plan["start_layer"])
    replacement, _ = build_replacement("ffn", model, start)
    build_compressed(model, plan, "lm-loss", replacement)
    _freeze(model)
    layer = decoder_layers(model)[start]
    params = [*layer.mlp.parameters(), *layer.post_attention_layernorm.parameters()]
    for param in params:
        param.requires_grad_(True)
    return train_lm(model, params, train_ids, val_ids, cfg, "lm-loss", compute_dtype)


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
    init_layer: str = "first",
) -> dict[str, Any]:
    """Build the compressed checkpoint for any healing kind; returns training statistics (empty for none)."""
    if kind not in ("lora", "lm-loss"):
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
        )
    dense_dir = Path(dense_dir)
    save_dtype = resolve_dtype(read_json(dense_dir / "manifest.json")["dtype"])
    model, tokenizer = load_model(dense_dir, torch.float32, device)
    if kind == "lora":
        build_compressed(model, plan, "none", None)
        model, stats = lora_heal(model, train_ids, val_ids, cfg, lora or {}, compute_dtype)
    else:
        stats = lm_loss_heal(model, plan, train_ids, val_ids, cfg, compute_dtype)
    _freeze(model)
    model.to(device="cpu", dtype=save_dtype)
    save_checkpoint(model, tokenizer, out_dir)
    return {"healing": kind, **stats}
