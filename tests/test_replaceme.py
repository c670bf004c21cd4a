"""ReplaceMe: the closed-form map against torch.linalg.lstsq, the fused checkpoint against the hooked forward."""

from __future__ import annotations

import pytest
import torch
from conftest import make_model, random_ids  # the same seed rebuilds the dense weights
from transformers import AutoModelForCausalLM

from streamline.healing.replaceme import (
    cosine_map,
    fuse_into_down_proj,
    mapped_mlp,
    normal_equations,
    replaceme,
    solve_normal_equations,
    window_activations,
    window_mse,
)
from streamline.pruning.surgery import keep_layers

START, END = 2, 4


def test_lstsq_map_equals_torch_lstsq(tiny_model):
    ids = random_ids(tiny_model.config.vocab_size)
    moments = normal_equations(tiny_model, ids, START, END, batch_size=3)
    transform = solve_normal_equations(moments.xtx, moments.xty)
    mlp_out, before, target = window_activations(tiny_model, ids, START, END)  # one batch, independent path
    expected = torch.linalg.lstsq(mlp_out.double(), (target - before).double()).solution
    assert moments.tokens == ids.numel() == mlp_out.shape[0]
    assert torch.allclose(transform, expected, atol=1e-6, rtol=1e-5)
    # the MSEs from the moments equal the direct ones
    assert moments.mse(None) == pytest.approx(window_mse(mlp_out, before, target, None), rel=1e-6)
    assert moments.mse(transform) == pytest.approx(window_mse(mlp_out, before, target, transform), rel=1e-6)
    assert window_mse(mlp_out, before, target, None) == pytest.approx(float(((before + mlp_out - target) ** 2).mean()))


def test_window_activations_split_the_residual(tiny_model):
    ids = random_ids(tiny_model.config.vocab_size, seqs=2)
    mlp_out, before, _ = window_activations(tiny_model, ids, START, END)
    layer = tiny_model.model.layers[START - 1]
    # Y + M is h_start, and M is the layer's MLP applied to Y (the residual after its attention).
    assert torch.allclose(mlp_out, layer.mlp(layer.post_attention_layernorm(before)), atol=1e-5)


def test_fused_checkpoint_reproduces_hooked_forward(tiny_model, tmp_path):
    ids = random_ids(tiny_model.config.vocab_size)
    transform, stats = replaceme(tiny_model, ids, START, END)  # fused + pruned in place
    assert stats["calibration_tokens"] == ids.numel() and stats["fit_seconds"] >= 0 and stats["peak_rss_mb"] > 0
    tiny_model.save_pretrained(tmp_path / "fused")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "fused", dtype=torch.float32).eval()
    assert loaded.config.num_hidden_layers == 6 - (END - START)

    dense = make_model(tiny_model.config.vocab_size)
    keep_layers(dense, [i for i in range(6) if not START <= i < END])
    probe = random_ids(tiny_model.config.vocab_size, seqs=2, seed=7)
    with torch.no_grad(), mapped_mlp(dense, START - 1, transform):
        hooked = dense(probe).logits
    with torch.no_grad():
        fused = loaded(probe).logits
    assert torch.allclose(fused, hooked, atol=1e-4, rtol=1e-4)


def test_lstsq_map_lowers_window_mse(tiny_model):
    ids = random_ids(tiny_model.config.vocab_size)
    _, stats = replaceme(tiny_model, ids, START, END)
    assert stats["window_mse_fitted"] < stats["window_mse_removed"]
    # held-out tokens: the map generalises beyond its calibration set
    dense = make_model(tiny_model.config.vocab_size)
    moments = normal_equations(dense, ids, START, END, batch_size=4)
    transform = solve_normal_equations(moments.xtx, moments.xty)
    m, y, h = window_activations(dense, random_ids(dense.config.vocab_size, seed=9), START, END)
    removed = ((y + m - h) ** 2).mean()
    fitted = ((y + (m.double() @ transform).float() - h) ** 2).mean()
    assert fitted < removed


def test_cosine_map_raises_cosine_similarity(tiny_model):
    ids = random_ids(tiny_model.config.vocab_size)
    m, y, h = window_activations(tiny_model, ids, START, END)
    transform = cosine_map(m, h - y, epochs=30, lr=1e-2, batch_rows=64)
    cos = torch.nn.functional.cosine_similarity
    assert cos((m.double() @ transform).float(), h - y).mean() > cos(m, h - y).mean() + 0.01


def test_fuse_into_down_proj_matches_hook(tiny_model):
    transform = torch.randn(32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    ids = random_ids(tiny_model.config.vocab_size, seqs=2)
    with torch.no_grad(), mapped_mlp(tiny_model, 0, transform):
        hooked = tiny_model(ids).logits
    fuse_into_down_proj(tiny_model, 0, transform)
    with torch.no_grad():
        fused = tiny_model(ids).logits
    assert torch.allclose(fused, hooked, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("bad", [(0, 2), (3, 3), (4, 7)])
def test_bad_window_is_refused(tiny_model, bad):
    with pytest.raises(ValueError, match="a fit needs a layer before the window"):
        replaceme(tiny_model, random_ids(tiny_model.config.vocab_size), *bad)
