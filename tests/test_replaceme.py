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


# --- against the official code's own path, re-derived here (mts-ai/ReplaceMe @ 5bb71d9) ----------------------------
def official_moments(model, ids: torch.Tensor, start: int, end: int, batch_size: int):
    """lstsq.py:122-137, 179-209: a forward hook on every layer's `mlp` keeps its output, the states come from
    `output_hidden_states` (hidden_states[1:]: the output of each layer); for the window start..end-1 the regression
    input is a1 = MLP output of layer start-1, the target a2 = h_(end-1 out) + a1 - h_(start-1 out); a1ᵀa1 and
    a1ᵀa2 accumulated over batches in float64."""
    d = model.config.hidden_size
    kept: dict[int, torch.Tensor] = {}
    hooks = [
        layer.mlp.register_forward_hook(lambda _m, _a, out, index=index: kept.__setitem__(index, out.detach()))
        for index, layer in enumerate(model.model.layers)
    ]
    a1ta1 = torch.zeros(d, d, dtype=torch.float64)
    a1ta2 = torch.zeros(d, d, dtype=torch.float64)
    try:
        for batch in ids.split(batch_size):
            with torch.no_grad():
                hidden = model(batch, output_hidden_states=True).hidden_states[1:]
            a1 = kept[start - 1].reshape(-1, d).double()
            a2 = hidden[end - 1].reshape(-1, d).double() + a1 - hidden[start - 1].reshape(-1, d).double()
            a1ta1 += a1.T @ a1
            a1ta2 += a1.T @ a2
    finally:
        for hook in hooks:
            hook.remove()
    return a1ta1, a1ta2


def test_lstsq_map_equals_the_official_regression(tiny_model):
    """Our map (hooks on the residual states, normal equations, torch.linalg.solve) against lstsq.py's
    inv(a1ᵀa1 + alpha I) @ a1ᵀa2 (lines 221-222, alpha 0) on a1/a2 rebuilt from output_hidden_states."""
    from streamline.healing.replaceme import fit_map

    ids = random_ids(tiny_model.config.vocab_size, seqs=10, length=20, seed=2)
    a1ta1, a1ta2 = official_moments(tiny_model, ids, START, END, batch_size=4)
    official = torch.linalg.inv(a1ta1) @ a1ta2
    ours, stats = fit_map(tiny_model, ids, START, END, "lstsq", batch_size=3)
    # the states come from float32 forwards in batches of 3 vs 4, whose matmul kernels round differently by CPU
    # (an Intel Xeon with AMX: 2.7e-8 absolute on entries of ~4e-4); a wrong formula differs by O(1)
    torch.testing.assert_close(ours, official, rtol=1e-5, atol=1e-7)
    assert stats["calibration_tokens"] == ids.numel()


def test_fused_checkpoint_equals_the_official_fusion(tiny_model, tiny_checkpoint, tmp_path):
    """The `replaceme` healing job's stock checkpoint against lstsq.py:240-246 done here: down_proj.weight of layer
    start-1 <- Tᵀ W (float64 product), the window truncated (utils.py truncate_model)."""
    from streamline.healing.heal import run_healing
    from streamline.healing.training import TrainConfig

    vocab = tiny_model.config.vocab_size
    train_ids, val_ids = random_ids(vocab, seqs=10, length=20, seed=2), random_ids(vocab, seqs=2, length=20, seed=5)
    plan = {"healing": "replaceme", "start_layer": START, "num_layers_removed": END - START,
            "removed_layers": list(range(START, END))}
    run_healing(tiny_checkpoint, plan, "replaceme", train_ids, val_ids, tmp_path / "rm",
                cfg=TrainConfig(batch_size=4, progress=False))
    a1ta1, a1ta2 = official_moments(tiny_model, train_ids, START, END, batch_size=4)
    transform = torch.linalg.inv(a1ta1) @ a1ta2
    official = make_model(vocab)
    proj = official.model.layers[START - 1].mlp.down_proj
    with torch.no_grad():
        proj.weight.copy_((transform.T @ proj.weight.double()).float())
    keep_layers(official, [i for i in range(6) if not START <= i < END])
    stock = AutoModelForCausalLM.from_pretrained(tmp_path / "rm", dtype=torch.float32).eval()
    probe = random_ids(vocab, seqs=2, seed=7)
    with torch.no_grad():
        torch.testing.assert_close(stock(probe).logits, official(probe).logits, rtol=1e-4, atol=1e-4)


def official_adam_method(a1: torch.Tensor, a2: torch.Tensor, epochs: int, lr: float) -> torch.Tensor:
    """utils.py:212-290 (`adam_method`, loss "cosine"): nn.Linear(d, d, bias=False) from the identity, Adam, the
    loss 1 - mean of the row-normalised products; T = weight.T. One batch per epoch here (rows <= 1024), so the
    official shuffle does not change the result."""
    linear = torch.nn.Linear(a1.shape[1], a1.shape[1], bias=False)
    linear.weight.data.copy_(torch.eye(a1.shape[1]))
    optimizer = torch.optim.Adam(linear.parameters(), lr=lr)
    for _ in range(epochs):
        optimizer.zero_grad()
        xa = linear(a1.float())
        y = a2.float()
        loss = 1 - ((xa / xa.norm(dim=1, keepdim=True)) * (y / y.norm(dim=1, keepdim=True))).sum(dim=1).mean()
        loss.backward()
        optimizer.step()
    return linear.weight.detach().T.double()


def test_cosine_map_is_the_official_adam_method_and_reaches_the_direct_minimum():
    """On a tiny problem whose targets are an exact linear map of the inputs (so 1 - cos has its minimum 0 along
    that map): the official procedure and ours give the same T, and with more steps both reach the minimum."""
    generator = torch.Generator().manual_seed(0)
    mlp_out = torch.randn(300, 6, generator=generator)
    truth = torch.eye(6) + 0.5 * torch.randn(6, 6, generator=generator)
    target = mlp_out @ truth
    torch.testing.assert_close(
        cosine_map(mlp_out, target, epochs=10, lr=1e-4), official_adam_method(mlp_out, target, 10, 1e-4),
        rtol=1e-5, atol=1e-6,
    )
    fitted = cosine_map(mlp_out, target, epochs=3000, lr=1e-2)
    cos = torch.nn.functional.cosine_similarity
    assert 1 - cos((mlp_out.double() @ fitted), target.double(), dim=1).mean() < 1e-5  # the direct minimum, 0
    assert cos(fitted.flatten(), truth.double().flatten(), dim=0) > 0.999  # along the true map, up to scale
