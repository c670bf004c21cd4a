import copy
import json

import pytest
import torch
from conftest import save_tiny_checkpoint

from streamline.checkpoint import attach_linear, save_checkpoint
from streamline.hidden_states import residual_states
from streamline.models import load_model
from streamline.replace import (
    TrainConfig,
    build_compressed,
    build_replacement,
    cache_pairs,
    causal_mask,
    evaluate_mse,
    layer_forward,
    mlp_block,
    pick_init_layer,
    run_replacement,
    train_replacement,
)

PLAN = {"start_layer": 2, "num_layers_removed": 2, "removed_layers": [2, 3]}
FAST = TrainConfig(epochs=4, batch_size=4, lr=3e-3, warmup_ratio=0.1, seed=0, progress=False)


def ids(n, seq=12, seed=0):
    return torch.randint(0, 200, (n, seq), generator=torch.Generator().manual_seed(seed))


def test_layer_forward_matches_layer_inside_model(tiny_model):
    batch = ids(3)
    states = residual_states(tiny_model, batch)
    forward = layer_forward(tiny_model.model.layers[2], tiny_model.model.rotary_emb)
    with torch.no_grad():
        torch.testing.assert_close(forward(states[2]), states[3], atol=1e-5, rtol=1e-5)


def test_causal_mask_blocks_future():
    mask = causal_mask(3, torch.float32)[0, 0]
    assert mask[0, 1] == torch.finfo(torch.float32).min and mask[1, 0] == 0 and mask[2, 2] == 0


@pytest.mark.parametrize("kind", ["ffn", "swiglu"])
def test_ffn_replacement_is_an_mlp_block_inside_a_stock_layer(tiny_model, kind):
    module, apply = build_replacement(kind, tiny_model, 2)
    assert torch.count_nonzero(module.self_attn.o_proj.weight) == 0
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("mlp.", "post_attention_layernorm.")) for n in trainable)
    hidden = torch.randn(2, 5, 32)
    full_layer = layer_forward(module, copy.deepcopy(tiny_model.model.rotary_emb))
    with torch.no_grad():
        torch.testing.assert_close(full_layer(hidden), apply(hidden))
        torch.testing.assert_close(apply(hidden), mlp_block(module, hidden))


@pytest.mark.parametrize("kind", ["linear", "ffn", "layer"])
def test_training_beats_plain_removal(tiny_model, tmp_path, kind):
    train = cache_pairs(tiny_model, ids(16), 2, 4, tmp_path / "train", shard_sequences=4)
    val = cache_pairs(tiny_model, ids(4, seed=1), 2, 4, tmp_path / "val", shard_sequences=4)
    assert len(train) == 4 and len(val) == 1
    module, apply = build_replacement(kind, tiny_model, 2)
    identity = evaluate_mse(lambda h: h, val, 4)
    result = train_replacement(module, apply, train, val, FAST)
    assert result["best_val_loss"] < identity
    assert result["best_val_loss"] == pytest.approx(evaluate_mse(apply, val, 4))
    assert result["tokens_seen"] == 4 * 16 * 12
    assert [row["epoch"] for row in result["curve"]] == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("kind", ["none", "linear", "ffn", "layer"])
def test_checkpoint_round_trip(tiny_checkpoint, tmp_path, kind):
    model, tokenizer = load_model(tiny_checkpoint)
    trained = None
    if kind != "none":
        train = cache_pairs(model, ids(8), 2, 4, tmp_path / "train", shard_sequences=4)
        val = cache_pairs(model, ids(4, seed=1), 2, 4, tmp_path / "val", shard_sequences=4)
        trained, apply = build_replacement(kind, model, 2)
        train_replacement(trained, apply, train, val, FAST)
    linear = build_compressed(model, PLAN, kind, trained)
    if linear is not None:
        attach_linear(model, *linear)
    save_checkpoint(model, tokenizer, tmp_path / "out", linear=linear)
    reloaded, _ = load_model(tmp_path / "out")
    expected_layers = 4 if kind in ("none", "linear") else 5
    assert reloaded.config.num_hidden_layers == expected_layers == len(reloaded.model.layers)
    batch = ids(2)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(batch).logits, model(batch).logits, atol=1e-5, rtol=0)
    if kind == "linear":
        assert (tmp_path / "out" / "streamline_linear.safetensors").is_file()


def test_stale_layer_count_is_refused(tiny_checkpoint, tmp_path):
    model, tokenizer = load_model(tiny_checkpoint)
    build_compressed(model, PLAN, "none", None)
    save_checkpoint(model, tokenizer, tmp_path / "out")
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    config["num_hidden_layers"] = 6
    (tmp_path / "out" / "config.json").write_text(json.dumps(config))
    with pytest.raises(RuntimeError, match="num_hidden_layers may be stale"):
        load_model(tmp_path / "out")


def run_ffn(dense, out, **extra):
    """run_replacement of an ffn on the window 2..3 with the fast training settings."""
    return run_replacement(
        dense,
        PLAN,
        "ffn",
        ids(8),
        ids(4, seed=1),
        out,
        cfg=FAST,
        shard_sequences=4,
        device="cpu",
        compute_dtype=torch.float32,
        **extra,
    )


def test_run_replacement_writes_checkpoint_and_stats(tiny_checkpoint, tmp_path):
    stats = run_ffn(tiny_checkpoint, tmp_path / "out")
    assert stats["best_val_loss"] < stats["val_loss_identity"]
    assert stats["trainable_params"] == 3 * 32 * 64 + 32
    model, _ = load_model(tmp_path / "out")
    assert model.config.num_hidden_layers == 5
    assert torch.count_nonzero(model.model.layers[2].self_attn.o_proj.weight) == 0


def _window_is_layer3_mlp(model):
    """Layer 2 an exact identity and layer 3 a pure MLP block: the window 2..3 computes x + MLP_3(norm_3(x))."""
    with torch.no_grad():
        for index in (2, 3):
            model.model.layers[index].self_attn.o_proj.weight.zero_()
        model.model.layers[2].mlp.down_proj.weight.zero_()
    return model


def test_best_fit_starts_from_the_layer_that_already_explains_the_window(tiny_model, tmp_path):
    model = _window_is_layer3_mlp(tiny_model)
    val = cache_pairs(model, ids(4, seed=1), 2, 4, tmp_path / "val", shard_sequences=4)
    identity = evaluate_mse(lambda h: h, val, 4)
    assert pick_init_layer("ffn", model, 2, 4, "first", val, 4, "cpu") == (2, {})
    assert pick_init_layer("linear", model, 2, 4, "best_fit", val, 4, "cpu") == (2, {})
    chosen, scores = pick_init_layer("ffn", model, 2, 4, "best_fit", val, 4, "cpu")
    assert chosen == 3
    assert scores[2] == pytest.approx(identity)  # layer 2's MLP block is the identity
    assert scores[3] < 1e-10 < identity
    with pytest.raises(ValueError, match="init_layer 'last' is unknown; allowed: first, best_fit"):
        pick_init_layer("ffn", model, 2, 4, "last", val, 4, "cpu")


def test_run_replacement_records_the_chosen_initial_layer(tiny_model, tokenizer, tmp_path):
    dense = save_tiny_checkpoint(_window_is_layer3_mlp(tiny_model), tokenizer, tmp_path / "dense")
    stats = run_ffn(dense, tmp_path / "out", init_layer="best_fit")
    assert stats["init_layer"] == 3 and sorted(stats["init_val_loss_by_layer"]) == [2, 3]
    assert stats["curve"][0]["val_loss"] == pytest.approx(stats["init_val_loss_by_layer"][3])
    assert stats["best_val_loss"] < 1e-10 < stats["val_loss_identity"]
