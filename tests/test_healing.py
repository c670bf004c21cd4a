"""LoRA and LM-loss healing on the tiny model."""

from __future__ import annotations

import pytest
import torch
from conftest import TEXT

from streamline.healing import run_healing
from streamline.models import load_model
from streamline.training import TrainConfig

WINDOW_PLAN = {"start_layer": 2, "num_layers_removed": 2, "removed_layers": [2, 3]}
SCATTERED_PLAN = {"start_layer": None, "num_layers_removed": 2, "removed_layers": [1, 4]}
CFG = TrainConfig(epochs=3, batch_size=4, lr=5e-3, seed=0, progress=False)


@pytest.fixture()
def text_ids(tokenizer):
    ids = tokenizer(TEXT, return_tensors="pt").input_ids[0]
    windows = ids[: (ids.numel() // 16) * 16].view(-1, 16)
    return windows[:12], windows[12:16]


def run(kind, plan, checkpoint, out, ids, compute_dtype=torch.float32, **extra):
    return run_healing(
        checkpoint,
        plan,
        kind,
        ids[0],
        ids[1],
        out,
        cfg=CFG,
        shard_sequences=4,
        device="cpu",
        compute_dtype=compute_dtype,
        **extra,
    )


def test_lora_lowers_lm_loss_and_merges_into_a_stock_checkpoint(tiny_checkpoint, tmp_path, text_ids):
    stats = run("lora", SCATTERED_PLAN, tiny_checkpoint, tmp_path / "lora", text_ids, lora={"rank": 4, "alpha": 8})
    curve = stats["curve"]
    assert stats["best_val_loss"] < curve[0]["val_loss"]
    assert stats["tokens_seen"] == 3 * 12 * 16 and stats["trainable_params"] > 0
    healed, _ = load_model(tmp_path / "lora")
    pruned, _ = load_model(tiny_checkpoint)
    from streamline.prune import apply_plan

    apply_plan(pruned, SCATTERED_PLAN)
    assert sum(p.numel() for p in healed.parameters()) == sum(p.numel() for p in pruned.parameters())
    assert not any("lora" in name for name, _ in healed.named_parameters())
    assert not torch.equal(
        healed.model.layers[0].self_attn.q_proj.weight, pruned.model.layers[0].self_attn.q_proj.weight
    )


def test_lm_loss_trains_only_the_replacement(tiny_checkpoint, tmp_path, text_ids):
    stats = run("lm-loss", WINDOW_PLAN, tiny_checkpoint, tmp_path / "lm", text_ids)
    assert stats["trainable_params"] == 3 * 32 * 64 + 32  # the MLP and its norm
    assert stats["best_val_loss"] < stats["curve"][0]["val_loss"]
    healed, _ = load_model(tmp_path / "lm")
    dense, _ = load_model(tiny_checkpoint)
    assert healed.config.num_hidden_layers == 5
    assert torch.count_nonzero(healed.model.layers[2].self_attn.o_proj.weight) == 0
    torch.testing.assert_close(healed.model.layers[3].mlp.up_proj.weight, dense.model.layers[4].mlp.up_proj.weight)


def test_bf16_autocast_starts_where_float32_does_learns_and_saves_float32(tiny_checkpoint, tmp_path, text_ids):
    full = run("lm-loss", WINDOW_PLAN, tiny_checkpoint, tmp_path / "fp32", text_ids)
    mixed = run("lm-loss", WINDOW_PLAN, tiny_checkpoint, tmp_path / "bf16", text_ids, compute_dtype=torch.bfloat16)
    assert (full["compute_dtype"], mixed["compute_dtype"]) == ("float32", "bfloat16")
    start_full, start_mixed = full["curve"][0]["val_loss"], mixed["curve"][0]["val_loss"]
    assert start_mixed != start_full  # the bf16 matmuls did run
    assert start_mixed == pytest.approx(start_full, rel=0.02)
    assert mixed["best_val_loss"] < start_mixed
    healed, _ = load_model(tmp_path / "bf16")
    assert healed.dtype == torch.float32


def test_window_healing_refuses_a_scattered_plan(tiny_checkpoint, tmp_path, text_ids):
    with pytest.raises(ValueError, match="needs a window of consecutive layers"):
        run("ffn", SCATTERED_PLAN, tiny_checkpoint, tmp_path / "x", text_ids)
