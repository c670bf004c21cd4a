"""LoRA and LM-loss healing on the tiny model."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import yaml
from conftest import TEXT

from streamline.acquisition.models import load_model
from streamline.healing import training
from streamline.healing.heal import run_healing
from streamline.healing.lm import LORA_DEFAULTS, lm_loss_model
from streamline.healing.training import TrainConfig

SCHEMA = Path(__file__).resolve().parents[1] / "schemas" / "config.schema.yaml"

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
    from streamline.pruning.surgery import apply_plan

    apply_plan(pruned, SCATTERED_PLAN)
    assert sum(p.numel() for p in healed.parameters()) == sum(p.numel() for p in pruned.parameters())
    assert not any("lora" in name for name, _ in healed.named_parameters())
    assert not torch.equal(
        healed.model.layers[0].self_attn.q_proj.weight, pruned.model.layers[0].self_attn.q_proj.weight
    )


# One decoder layer of the tiny model: q 32x32, k 32x16, v 32x16, o 32x32 (2 kv heads of 8), gate/up/down 3x32x64,
# two norms of 32: 1024 + 512 + 512 + 1024 + 6144 + 64.
LAYER_PARAMS = 9280


def test_lm_loss_trainable_parameters_are_exactly_one_decoder_layer(tiny_model):
    dense = copy.deepcopy(tiny_model)
    params = lm_loss_model(tiny_model, WINDOW_PLAN, 2)
    trainable = {name for name, p in tiny_model.named_parameters() if p.requires_grad}
    layer_names = {f"model.layers.2.{name}" for name, _ in dense.model.layers[2].named_parameters()}
    assert trainable == layer_names and len(layer_names) == 9
    assert sum(p.numel() for p in params) == LAYER_PARAMS == sum(p.numel() for p in dense.model.layers[2].parameters())
    assert len(tiny_model.model.layers) == 5  # layer 3 is gone, layer 2 (the window's first) stands in for it
    for name, value in tiny_model.model.layers[2].state_dict().items():
        assert torch.equal(value, dense.model.layers[2].state_dict()[name])  # untrained: a copy of layer 2


def test_lm_loss_trains_the_layer_with_betas_0_9_0_95(tiny_checkpoint, tmp_path, text_ids, monkeypatch):
    seen = []
    adamw = torch.optim.AdamW

    def recording_adamw(params, **kwargs):
        seen.append(kwargs["betas"])
        return adamw(params, **kwargs)

    monkeypatch.setattr(training.torch.optim, "AdamW", recording_adamw)
    stats = run("lm-loss", WINDOW_PLAN, tiny_checkpoint, tmp_path / "lm", text_ids)
    assert seen == [(0.9, 0.95)]  # train_llmloss.py line 135
    assert stats["trainable_params"] == LAYER_PARAMS and stats["init_layer"] == 2
    assert stats["best_val_loss"] < stats["curve"][0]["val_loss"]
    healed, _ = load_model(tmp_path / "lm")
    dense, _ = load_model(tiny_checkpoint)
    assert healed.config.num_hidden_layers == 5
    healed_layers, dense_layers = healed.model.layers, dense.model.layers
    assert not torch.equal(healed_layers[2].self_attn.o_proj.weight, dense_layers[2].self_attn.o_proj.weight)
    torch.testing.assert_close(healed_layers[3].mlp.up_proj.weight, dense_layers[4].mlp.up_proj.weight)
    torch.testing.assert_close(healed_layers[1].self_attn.q_proj.weight, dense_layers[1].self_attn.q_proj.weight)


def test_lora_defaults_are_the_schema_defaults():
    schema = yaml.safe_load(SCHEMA.read_text())["properties"]["lora"]["properties"]
    assert {key: spec["default"] for key, spec in schema.items()} == LORA_DEFAULTS
    assert LORA_DEFAULTS["dropout"] == 0.05  # shortened-llm, src/lora_retrain.py


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


def test_lm_loss_best_fit_starts_from_the_layer_that_explains_the_window(tiny_model, tokenizer, tmp_path, text_ids):
    """Layer 2 an identity and layer 3 a pure MLP block: best_fit starts lm-loss from a copy of layer 3."""
    from conftest import save_tiny_checkpoint

    with torch.no_grad():
        for index in (2, 3):
            tiny_model.model.layers[index].self_attn.o_proj.weight.zero_()
        tiny_model.model.layers[2].mlp.down_proj.weight.zero_()
    dense = save_tiny_checkpoint(tiny_model, tokenizer, tmp_path / "dense")
    stats = run("lm-loss", WINDOW_PLAN, dense, tmp_path / "lm", text_ids, init_layer="best_fit")
    assert (stats["init_rule"], stats["init_layer"]) == ("best_fit", 3)
    assert stats["init_val_loss_by_layer"][3] < 1e-10 < stats["init_val_loss_by_layer"][2]
