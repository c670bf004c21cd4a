import copy
import json

import pandas as pd
import pytest
import torch
from conftest import save_tiny_checkpoint
from transformers import AutoModelForCausalLM

from streamline.acquisition.checkpoint import FeedForward, attach_replacement, save_checkpoint
from streamline.acquisition.families import causal_mask, layer_forward, mlp_block
from streamline.acquisition.models import build_manifest, load_model
from streamline.healing.heal import run_healing
from streamline.healing.replace import (
    TrainConfig,
    build_compressed,
    build_replacement,
    cache_pairs,
    evaluate_mse,
    pick_init_layer,
    train_replacement,
)
from streamline.importance.hidden_states import residual_states
from streamline.pruning.plans import replacement_params

PLAN = {"start_layer": 2, "num_layers_removed": 2, "removed_layers": [2, 3]}
FAST = TrainConfig(epochs=4, batch_size=4, lr=3e-3, warmup_ratio=0.1, seed=0, progress=False)
# The paper's FFN starts from a random map far from the identity (not residual): it needs more and larger steps.
FFN_FAST = TrainConfig(epochs=40, batch_size=4, lr=1e-2, warmup_ratio=0.1, seed=0, progress=False)


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


def test_swiglu_replacement_is_an_mlp_block_inside_a_stock_layer(tiny_model):
    module, apply = build_replacement("swiglu", tiny_model, 2)
    assert torch.count_nonzero(module.self_attn.o_proj.weight) == 0
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("mlp.", "post_attention_layernorm.")) for n in trainable)
    hidden = torch.randn(2, 5, 32)
    full_layer = layer_forward(module, copy.deepcopy(tiny_model.model.rotary_emb))
    with torch.no_grad():
        torch.testing.assert_close(full_layer(hidden), apply(hidden))
        torch.testing.assert_close(apply(hidden), mlp_block(module, hidden))


def test_ffn_is_the_papers_feed_forward(tiny_model):
    """d -> 4d, ReLU, 4d -> d with biases; weights normal(0, initializer_range), biases zero; not residual."""
    module, apply = build_replacement("ffn", tiny_model, 2, seed=3)
    assert isinstance(module, FeedForward) and apply is module
    assert module.fc1.weight.shape == (128, 32) and module.fc2.weight.shape == (32, 128)
    assert not module.fc1.bias.any() and not module.fc2.bias.any()
    weights = torch.cat([module.fc1.weight.flatten(), module.fc2.weight.flatten()])
    assert weights.std().item() == pytest.approx(tiny_model.config.initializer_range, rel=0.05)  # 8192 draws
    torch.testing.assert_close(build_replacement("ffn", tiny_model, 2, seed=3)[0].fc1.weight, module.fc1.weight)
    hidden = torch.randn(2, 5, 32)
    with torch.no_grad():
        module.fc1.bias.normal_()
        module.fc2.bias.normal_()
        by_hand = torch.relu(hidden @ module.fc1.weight.T + module.fc1.bias) @ module.fc2.weight.T + module.fc2.bias
        torch.testing.assert_close(apply(hidden), by_hand)  # no residual, no norm


def test_ffn_and_swiglu_differ_in_parameter_count_as_designed(tiny_model):
    d, inter = 32, 64
    ffn, _ = build_replacement("ffn", tiny_model, 2)
    swiglu, _ = build_replacement("swiglu", tiny_model, 2)
    ffn_params = sum(p.numel() for p in ffn.parameters() if p.requires_grad)
    swiglu_params = sum(p.numel() for p in swiglu.parameters() if p.requires_grad)
    assert ffn_params == 2 * 4 * d * d + 4 * d + d == 8352  # fc1, fc2 and their biases
    assert swiglu_params == 3 * d * inter + d == 6176  # gate, up, down and the post-attention norm
    manifest = build_manifest(tiny_model, {"kind": "test"}, torch.float32)
    assert replacement_params("ffn", manifest, 2) == ffn_params
    assert replacement_params("swiglu", manifest, 2) == replacement_params("swiglu-bestfit", manifest, 2) == 6176
    assert replacement_params("layer", manifest, 2) == replacement_params("lm-loss", manifest, 2) == 9280


@pytest.mark.parametrize("kind", ["linear", "ffn", "swiglu", "layer"])
def test_training_beats_plain_removal(tiny_model, tmp_path, kind):
    train = cache_pairs(tiny_model, ids(16), 2, 4, tmp_path / "train", shard_sequences=4)
    val = cache_pairs(tiny_model, ids(4, seed=1), 2, 4, tmp_path / "val", shard_sequences=4)
    assert len(train) == 4 and len(val) == 1
    module, apply = build_replacement(kind, tiny_model, 2)
    identity = evaluate_mse(lambda h: h, val, 4)
    cfg = FFN_FAST if kind == "ffn" else FAST
    result = train_replacement(module, apply, train, val, cfg)
    assert result["best_val_loss"] < identity
    assert result["best_val_loss"] == pytest.approx(evaluate_mse(apply, val, 4))
    assert result["tokens_seen"] == cfg.epochs * 16 * 12
    assert [row["epoch"] for row in result["curve"]] == list(range(cfg.epochs + 1))


@pytest.mark.parametrize("kind", ["none", "linear", "ffn", "swiglu", "layer"])
def test_checkpoint_round_trip(tiny_checkpoint, tmp_path, kind):
    model, tokenizer = load_model(tiny_checkpoint)
    trained = None
    if kind != "none":
        train = cache_pairs(model, ids(8), 2, 4, tmp_path / "train", shard_sequences=4)
        val = cache_pairs(model, ids(4, seed=1), 2, 4, tmp_path / "val", shard_sequences=4)
        trained, apply = build_replacement(kind, model, 2)
        train_replacement(trained, apply, train, val, FFN_FAST if kind == "ffn" else FAST)
    extra = build_compressed(model, PLAN, kind, trained)
    if extra is not None:
        attach_replacement(model, *extra)
    save_checkpoint(model, tokenizer, tmp_path / "out", extra=extra)
    reloaded, _ = load_model(tmp_path / "out")
    expected_layers = 4 if kind in ("none", "linear", "ffn") else 5
    assert reloaded.config.num_hidden_layers == expected_layers == len(reloaded.model.layers)
    batch = ids(2)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(batch).logits, model(batch).logits, atol=1e-5, rtol=0)
    if kind in ("linear", "ffn"):
        assert (tmp_path / "out" / f"streamline_{kind}.safetensors").is_file()
        # stock transformers loads the folder without the module: plain removal of the window
        stock = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
        plain, _ = load_model(tiny_checkpoint)
        build_compressed(plain, PLAN, "none", None)
        with torch.no_grad():
            torch.testing.assert_close(stock(batch).logits, plain(batch).logits, atol=1e-5, rtol=0)
            assert not torch.allclose(stock(batch).logits, model(batch).logits, atol=1e-3)


def test_stale_layer_count_is_refused(tiny_checkpoint, tmp_path):
    model, tokenizer = load_model(tiny_checkpoint)
    build_compressed(model, PLAN, "none", None)
    save_checkpoint(model, tokenizer, tmp_path / "out")
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    config["num_hidden_layers"] = 6
    (tmp_path / "out" / "config.json").write_text(json.dumps(config))
    with pytest.raises(RuntimeError, match=r"num_hidden_layers=6, may be stale\): 18 weights missing"):
        load_model(tmp_path / "out")


def run_kind(dense, out, kind="swiglu", **extra):
    """run_healing of `kind` on the window 2..3 with the fast training settings."""
    return run_healing(
        dense,
        PLAN,
        kind,
        ids(8),
        ids(4, seed=1),
        out,
        cfg=FFN_FAST if kind == "ffn" else FAST,
        shard_sequences=4,
        device="cpu",
        compute_dtype=torch.float32,
        **extra,
    )


def test_run_replacement_writes_checkpoint_and_stats(tiny_checkpoint, tmp_path):
    stats = run_kind(tiny_checkpoint, tmp_path / "out")
    assert stats["best_val_loss"] < stats["val_loss_identity"]
    assert stats["trainable_params"] == 3 * 32 * 64 + 32
    assert (stats["module"], stats["init_rule"], stats["init_layer"]) == ("swiglu", "first", 2)
    model, _ = load_model(tmp_path / "out")
    assert model.config.num_hidden_layers == 5
    assert torch.count_nonzero(model.model.layers[2].self_attn.o_proj.weight) == 0


def test_run_replacement_ffn_stores_the_pruned_model_plus_the_ffn(tiny_checkpoint, tmp_path):
    stats = run_kind(tiny_checkpoint, tmp_path / "out", kind="ffn")
    assert stats["best_val_loss"] < stats["curve"][0]["val_loss"] and stats["trainable_params"] == 8352
    assert (stats["module"], stats["init_rule"], stats["init_layer"]) == ("ffn", None, None)
    extras = json.loads((tmp_path / "out" / "streamline_extras.json").read_text())
    assert extras == {"ffn": {"file": "streamline_ffn.safetensors", "position": 2}}
    model, _ = load_model(tmp_path / "out")
    assert model.config.num_hidden_layers == 4


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
    assert pick_init_layer("swiglu", model, 2, 4, "first", val, 4, "cpu") == (2, {})
    assert pick_init_layer("linear", model, 2, 4, "best_fit", val, 4, "cpu") == (2, {})
    assert pick_init_layer("ffn", model, 2, 4, "best_fit", val, 4, "cpu") == (2, {})  # copies no layer
    chosen, scores = pick_init_layer("swiglu", model, 2, 4, "best_fit", val, 4, "cpu")
    assert chosen == 3
    assert scores[2] == pytest.approx(identity)  # layer 2's MLP block is the identity
    assert scores[3] < 1e-10 < identity
    with pytest.raises(ValueError, match="init_layer 'last' is unknown; allowed: first, best_fit"):
        pick_init_layer("swiglu", model, 2, 4, "last", val, 4, "cpu")


@pytest.mark.parametrize("kind,init_layer", [("swiglu-bestfit", "first"), ("swiglu", "best_fit")])
def test_run_replacement_records_the_chosen_initial_layer(tiny_model, tokenizer, tmp_path, kind, init_layer):
    """`swiglu-bestfit` is best_fit whatever training.init_layer says; plain `swiglu` follows init_layer."""
    dense = save_tiny_checkpoint(_window_is_layer3_mlp(tiny_model), tokenizer, tmp_path / "dense")
    stats = run_kind(dense, tmp_path / "out", kind=kind, init_layer=init_layer)
    assert (stats["healing"], stats["module"], stats["init_rule"]) == (kind, "swiglu", "best_fit")
    assert stats["init_layer"] == 3 and sorted(stats["init_val_loss_by_layer"]) == [2, 3]
    assert stats["curve"][0]["val_loss"] == pytest.approx(stats["init_val_loss_by_layer"][3])
    assert stats["best_val_loss"] < 1e-10 < stats["val_loss_identity"]


def test_replacements_of_one_window_share_the_cached_pairs(tiny_checkpoint, tmp_path):
    """The second kind reads the first one's pairs (no dense forward) and trains exactly as without the cache."""
    cache = tmp_path / "cache"
    first = run_kind(tiny_checkpoint, tmp_path / "swiglu", pair_cache=cache)
    second = run_kind(tiny_checkpoint, tmp_path / "layer", kind="layer", pair_cache=cache)
    uncached = run_kind(tiny_checkpoint, tmp_path / "layer-nocache", kind="layer")
    assert (first["pairs_reused"], second["pairs_reused"], uncached["pairs_reused"]) == (False, True, False)
    assert len(list(cache.iterdir())) == 1  # one entry: window 2..3 and the same token windows
    curves = [pd.DataFrame(run["curve"]) for run in (second, uncached)]
    pd.testing.assert_frame_equal(*curves)  # train_loss is NaN before the first step
    assert second["best_val_loss"] == uncached["best_val_loss"]
