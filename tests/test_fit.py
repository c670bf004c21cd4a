"""The closed-form healings through run_healing (fit.py): each checkpoint against an independent computation."""

from __future__ import annotations

import pytest
import torch
from conftest import make_model, random_ids
from transformers import AutoModelForCausalLM

from streamline.acquisition.models import load_model
from streamline.healing.fit import pair_scales
from streamline.healing.heal import run_healing
from streamline.healing.linear_patch import fit_scales, hadamard_matrix, patch_matrix, residual_patched
from streamline.healing.replace import cache_pairs
from streamline.healing.replaceme import window_activations
from streamline.healing.training import TrainConfig
from streamline.pruning.surgery import drop_layers, layers_skipped


def window_plan(start: int, end: int, healing: str) -> dict:
    return {
        "healing": healing,
        "start_layer": start,
        "num_layers_removed": end - start,
        "removed_layers": list(range(start, end)),
    }


def heal(checkpoint, plan, kind, train_ids, val_ids, out_dir, pair_cache=None) -> dict:
    return run_healing(
        checkpoint,
        plan,
        kind,
        train_ids,
        val_ids,
        out_dir,
        cfg=TrainConfig(batch_size=4, progress=False),
        shard_sequences=4,
        device="cpu",
        compute_dtype=torch.float32,
        pair_cache=pair_cache,
    )


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids, use_cache=False).logits


def test_replaceme_checkpoint_is_the_lstsq_map_fused_and_loads_stock(tiny_model, tiny_checkpoint, tmp_path):
    vocab = tiny_model.config.vocab_size
    train_ids, val_ids, probe = random_ids(vocab, 32, 24, 1), random_ids(vocab, 4, 24, 2), random_ids(vocab, 2, 24, 3)
    stats = heal(tiny_checkpoint, window_plan(2, 4, "replaceme"), "replaceme", train_ids, val_ids, tmp_path / "rm")
    # independent: torch.linalg.lstsq on the same activations, fused by hand into layer 1's down_proj
    mlp_out, before, target = window_activations(tiny_model, train_ids, 2, 4)  # (N, d) each
    transform = torch.linalg.lstsq(mlp_out.double(), (target - before).double()).solution  # (d, d)
    expected = make_model(vocab)
    proj = expected.model.layers[1].mlp.down_proj
    with torch.no_grad():
        proj.weight.copy_((transform.T @ proj.weight.double()).float())
    drop_layers(expected, range(2, 4))
    stock = AutoModelForCausalLM.from_pretrained(tmp_path / "rm", dtype=torch.float32).eval()
    project, _ = load_model(tmp_path / "rm", torch.float32, "cpu")
    assert stock.config.num_hidden_layers == 4
    assert torch.equal(logits(stock, probe), logits(project, probe))
    torch.testing.assert_close(logits(stock, probe), logits(expected, probe), rtol=1e-4, atol=1e-4)
    d = tiny_model.config.hidden_size
    assert stats["trainable_params"] == d * d and stats["calibration_tokens"] == stats["tokens_seen"] == 32 * 24
    assert stats["train_seconds"] == stats["fit_seconds"] > 0 and stats["peak_rss_mb"] > 0
    assert stats["best_val_loss"] < stats["val_loss_identity"]


def test_replaceme_cosine_builds_a_stock_checkpoint(tiny_model, tiny_checkpoint, tmp_path):
    vocab = tiny_model.config.vocab_size
    train_ids, val_ids = random_ids(vocab, 8, 24, 1), random_ids(vocab, 4, 24, 2)
    stats = heal(
        tiny_checkpoint, window_plan(2, 4, "replaceme-cosine"), "replaceme-cosine", train_ids, val_ids, tmp_path / "rc"
    )
    assert stats["fit"] == "replaceme-cosine" and stats["window_mse_fitted"] != stats["window_mse_removed"]
    stock = AutoModelForCausalLM.from_pretrained(tmp_path / "rc", dtype=torch.float32)
    assert stock.config.num_hidden_layers == 4


def test_replaceme_refuses_a_window_at_layer_0(tiny_checkpoint, tmp_path):
    ids = random_ids(100, 4, 8)
    with pytest.raises(
        ValueError,
        match=r"^healing 'replaceme' fuses its map into the layer before the window, but the "
        r"plan's window 0\.\.1 starts at layer 0; use a method whose window starts at layer 1 or later$",
    ):
        heal(tiny_checkpoint, window_plan(0, 2, "replaceme"), "replaceme", ids, ids, tmp_path / "x")


def test_linearpatch_checkpoint_equals_the_official_hook(tiny_model, tiny_checkpoint, tmp_path):
    vocab = tiny_model.config.vocab_size
    train_ids, val_ids, probe = random_ids(vocab, 8, 24, 1), random_ids(vocab, 4, 24, 2), random_ids(vocab, 2, 24, 3)
    stats = heal(
        tiny_checkpoint,
        window_plan(2, 4, "linearpatch"),
        "linearpatch",
        train_ids,
        val_ids,
        tmp_path / "lp",
        pair_cache=tmp_path / "cache",
    )
    # independent: scales straight from the model's states (linear_patch.fit_scales), P applied by the hook
    scales, _ = fit_scales(tiny_model, train_ids, 2, 4, "residual", batch_size=3)
    patch = patch_matrix(scales, hadamard_matrix(tiny_model.config.hidden_size))
    with residual_patched(tiny_model, 1, patch), layers_skipped(tiny_model, {2, 3}):
        expected = logits(tiny_model, probe)
    project, _ = load_model(tmp_path / "lp", torch.float32, "cpu")
    torch.testing.assert_close(logits(project, probe), expected, rtol=1e-4, atol=1e-4)
    with layers_skipped(tiny_model, {2, 3}):  # stock transformers loads the folder as plain removal
        removal = logits(tiny_model, probe)
    stock = AutoModelForCausalLM.from_pretrained(tmp_path / "lp", dtype=torch.float32).eval()
    torch.testing.assert_close(logits(stock, probe), removal, rtol=1e-5, atol=1e-5)
    assert stats["trainable_params"] == tiny_model.config.hidden_size and not stats["pairs_reused"]
    assert stats["calibration_tokens"] == 8 * 24 and stats["train_seconds"] == stats["fit_seconds"]
    again = heal(
        tiny_checkpoint,
        window_plan(2, 4, "linearpatch"),
        "linearpatch",
        train_ids,
        val_ids,
        tmp_path / "lp2",
        pair_cache=tmp_path / "cache",
    )
    assert again["pairs_reused"] and again["best_val_loss"] == stats["best_val_loss"]


def test_pair_scales_equal_scales_from_the_states(tiny_model, tmp_path):
    ids = random_ids(tiny_model.config.vocab_size, 6, 16, 4)
    shards = cache_pairs(tiny_model, ids, 1, 4, tmp_path / "pairs", shard_sequences=4)  # 2 shards: 4 + 2
    hadamard = hadamard_matrix(tiny_model.config.hidden_size)
    scales, tokens = pair_scales(shards, hadamard)
    torch.testing.assert_close(scales, fit_scales(tiny_model, ids, 1, 4, "residual", batch_size=5)[0])
    assert tokens == 6 * 16


def test_last_layers_trains_only_the_last_layers_norm_and_head(tiny_model, tiny_checkpoint, tmp_path):
    ids = random_ids(tiny_model.config.vocab_size, 12, 16, 5)
    plan = {"healing": "last-layers", "start_layer": None, "num_layers_removed": 2, "removed_layers": [4, 5]}
    stats = heal(tiny_checkpoint, plan, "last-layers", ids[:8], ids[8:], tmp_path / "ll")
    healed = AutoModelForCausalLM.from_pretrained(tmp_path / "ll", dtype=torch.float32)
    dense = dict(tiny_model.named_parameters())
    changed = {name for name, p in healed.named_parameters() if not torch.equal(p, dense[name])}
    trainable = {f"model.layers.{i}." for i in (1, 2, 3)}
    assert changed and all(
        n.startswith(tuple(trainable)) or n in ("model.norm.weight", "lm_head.weight") for n in changed
    )
    assert healed.config.num_hidden_layers == 4 and stats["last_layers"] == 3
    assert stats["trainable_params"] == sum(
        p.numel()
        for n, p in healed.named_parameters()
        if n.startswith(tuple(trainable)) or n in ("model.norm.weight", "lm_head.weight")
    )
