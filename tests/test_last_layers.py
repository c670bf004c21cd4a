"""Reverse-order pruning and partial-layer fine-tuning: the order, the trainable set by hand, a falling LM loss."""

from __future__ import annotations

import pytest
import torch
from conftest import TEXT

from streamline.healing.last_layers import unfreeze_last_layers
from streamline.healing.lm import last_layers_heal, mean_lm_loss
from streamline.healing.training import TrainConfig
from streamline.pruning.criteria import reverse_order
from streamline.pruning.surgery import keep_layers

LAYER_PARAMS = (
    "self_attn.q_proj.weight",
    "self_attn.k_proj.weight",
    "self_attn.v_proj.weight",
    "self_attn.o_proj.weight",
    "mlp.gate_proj.weight",
    "mlp.up_proj.weight",
    "mlp.down_proj.weight",
    "input_layernorm.weight",
    "post_attention_layernorm.weight",
)


def test_reverse_order_removes_the_last_layers_first():
    assert reverse_order(6) == [5, 4, 3, 2, 1, 0]
    assert sorted(reverse_order(6)[:2]) == [4, 5]  # 2 removed: the model keeps layers 0..3 (prune_llm.py `tail`)
    with pytest.raises(ValueError, match="num_layers 0"):
        reverse_order(0)


def test_trainable_names_are_the_last_k_layers_norm_and_head(tiny_model):
    keep_layers(tiny_model, [0, 1, 2, 3])  # reverse order, 2 of 6 removed
    names = unfreeze_last_layers(tiny_model, k=2)
    expected = [f"model.layers.{i}.{p}" for i in (2, 3) for p in LAYER_PARAMS] + ["model.norm.weight", "lm_head.weight"]
    assert sorted(names) == sorted(expected)
    assert sorted(n for n, p in tiny_model.named_parameters() if p.requires_grad) == sorted(expected)


def test_bad_k_is_refused(tiny_model):
    with pytest.raises(ValueError, match="last_layers k=7 is outside 0..6"):
        unfreeze_last_layers(tiny_model, k=7)


def test_partial_fine_tuning_lowers_lm_loss_and_leaves_the_rest(tiny_model, tokenizer):
    keep_layers(tiny_model, [0, 1, 2, 3])
    ids = torch.tensor(tokenizer(TEXT)["input_ids"][: 16 * 32]).view(16, 32)
    train_ids, val_ids = ids[:12], ids[12:]
    frozen = {n: p.detach().clone() for n, p in tiny_model.named_parameters() if "layers.0." in n or "embed" in n}
    before = mean_lm_loss(tiny_model, val_ids, 4)
    cfg = TrainConfig(epochs=3, batch_size=4, lr=3e-3, weight_decay=0.0, progress=False)
    stats = last_layers_heal(tiny_model, train_ids, val_ids, cfg, k=1)
    after = mean_lm_loss(tiny_model, val_ids, 4)
    assert after < before - 0.1
    assert stats["curve"][0]["val_loss"] == pytest.approx(before, rel=1e-5)
    assert stats["tokens_seen"] == 3 * train_ids.numel() and stats["train_seconds"] > 0 and stats["peak_rss_mb"] > 0
    assert stats["trainable_params"] == sum(
        p.numel() for n, p in tiny_model.named_parameters() if n in stats["trainable_names"]
    )
    assert all(torch.equal(p, frozen[n]) for n, p in tiny_model.named_parameters() if n in frozen)
    assert not any(p.requires_grad for p in tiny_model.parameters())
