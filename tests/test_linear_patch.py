"""LinearPatch: Hadamard matrices, the channel scales by hand, the fused model against the patched forward."""

from __future__ import annotations

import pytest
import torch
from conftest import make_model, random_ids
from transformers import AutoModelForCausalLM

from streamline.acquisition.checkpoint import save_checkpoint
from streamline.acquisition.models import load_model
from streamline.healing.linear_patch import (
    fit_scales,
    hadamard_matrix,
    linear_patch,
    patch_matrix,
    residual_patched,
    sequence_scales,
)
from streamline.healing.replaceme import mapped_mlp, window_activations
from streamline.importance.hidden_states import residual_states
from streamline.pruning.surgery import keep_layers

START, END = 2, 4


@pytest.mark.parametrize("n", [1, 2, 8, 12, 20, 28, 32, 36, 72, 576])
def test_hadamard_is_orthonormal_with_equal_magnitudes(n):
    h = hadamard_matrix(n)
    assert torch.allclose(h @ h.T, torch.eye(n, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(h.abs(), torch.full((n, n), n**-0.5, dtype=torch.float64))


def test_hadamard_of_a_power_of_two_is_sylvester():
    h2 = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64)
    expected = torch.kron(h2, h2) / 2  # the official butterfly gives the same for n = 4
    assert torch.equal(hadamard_matrix(4), expected)


def test_unsupported_width_is_one_clear_error():
    with pytest.raises(ValueError, match="hidden size 22 "):
        hadamard_matrix(22)


def test_scales_by_hand():
    h = hadamard_matrix(4)
    source = torch.randn(2, 3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(sequence_scales(source, 3 * source, h), torch.full((2, 4), 3.0, dtype=torch.float64))
    # one rotated channel: h[1] @ H = e_1 (H symmetric, H H = I), so only channel 1 is defined (the rest 0/0)
    scales = sequence_scales((2 * h[1]).expand(1, 5, 4), (5 * h[1]).expand(1, 5, 4), h)
    assert scales[0, 1] == pytest.approx(2.5)
    patch = patch_matrix(torch.tensor([1.0, 2.5, 1.0, 1.0]), h)
    assert torch.allclose(patch, patch.T) and torch.allclose(h[1] @ patch, 2.5 * h[1])


def test_scales_recover_a_rotated_channel_scaling():
    h = hadamard_matrix(32)
    gains = torch.linspace(0.5, 3.0, 32, dtype=torch.float64)
    source = torch.randn(4, 16, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    target = source @ patch_matrix(gains, h)
    scales = sequence_scales(source, target, h).mean(dim=0)
    assert torch.allclose(scales, gains, atol=1e-12)
    assert ((source @ patch_matrix(scales, h) - target) ** 2).mean() < 1e-20


def test_residual_patch_multiplies_the_interface_state(tiny_model):
    ids = random_ids(tiny_model.config.vocab_size, seqs=2)
    scales, tokens = fit_scales(tiny_model, ids, START, END, branch="residual")
    patch = patch_matrix(scales, hadamard_matrix(32))
    plain = residual_states(tiny_model, ids, upto=START)[START]
    with residual_patched(tiny_model, START - 1, patch):
        patched = residual_states(tiny_model, ids, upto=START)[START]
    assert tokens == ids.numel()
    assert torch.allclose(patched, (plain.double() @ patch).float(), atol=1e-5)


@pytest.mark.parametrize("branch", ["residual", "mlp"])
def test_patch_aligns_channel_magnitudes(tiny_model, branch):
    """The fitted statistic: on one calibration sequence, mean |source P H| equals mean |target H| channel by channel."""
    ids = random_ids(tiny_model.config.vocab_size, seqs=1)
    h = hadamard_matrix(32)
    scales, _ = fit_scales(tiny_model, ids, START, END, branch=branch)
    m, y, h_end = window_activations(tiny_model, ids, START, END)
    source, target = (y + m, h_end) if branch == "residual" else (m, h_end - y)
    patched = source.double() @ patch_matrix(scales, h)
    assert torch.allclose((patched @ h).abs().mean(0), (target.double() @ h).abs().mean(0), rtol=1e-6)
    assert not torch.allclose((source.double() @ h).abs().mean(0), (target.double() @ h).abs().mean(0), rtol=1e-2)


def test_mlp_branch_fused_checkpoint_equals_patched_forward(tiny_model, tmp_path):
    ids = random_ids(tiny_model.config.vocab_size)
    patch, stats, module = linear_patch(tiny_model, ids, START, END, branch="mlp")
    assert module is None
    assert stats["calibration_tokens"] == ids.numel() and stats["fit_seconds"] >= 0 and stats["peak_rss_mb"] > 0
    tiny_model.save_pretrained(tmp_path / "fused")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "fused", dtype=torch.float32).eval()
    dense = make_model(tiny_model.config.vocab_size)  # same seed: the dense weights again
    keep_layers(dense, [i for i in range(6) if not START <= i < END])
    probe = random_ids(tiny_model.config.vocab_size, seqs=2, seed=7)
    with torch.no_grad(), mapped_mlp(dense, START - 1, patch):
        hooked = dense(probe).logits
    with torch.no_grad():
        fused = loaded(probe).logits
    assert loaded.config.num_hidden_layers == 4
    assert torch.allclose(fused, hooked, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(("start", "end"), [(START, END), (4, 6)])  # (4, 6): the patch sits before the final norm
def test_residual_patch_checkpoint_equals_patched_forward(tiny_model, tokenizer, tmp_path, start, end):
    ids = random_ids(tiny_model.config.vocab_size)
    patch, stats, module = linear_patch(tiny_model, ids, start, end)  # official branch
    assert stats["method"] == "linear_patch_residual"
    save_checkpoint(tiny_model, tokenizer, tmp_path / "patched", extra=(module, start))
    loaded, _ = load_model(tmp_path / "patched")  # re-attaches the `linear` extra
    dense = make_model(tiny_model.config.vocab_size)
    keep_layers(dense, [i for i in range(6) if not start <= i < end])
    probe = random_ids(tiny_model.config.vocab_size, seqs=2, seed=7)
    with torch.no_grad(), residual_patched(dense, start - 1, patch):
        hooked = dense(probe).logits
    with torch.no_grad():
        stored = loaded(probe).logits
        plain = dense(probe).logits
    assert torch.allclose(stored, hooked, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(stored, plain, atol=1e-2)


def test_bad_branch_is_refused(tiny_model):
    with pytest.raises(ValueError, match="branch 'both' is unknown"):
        fit_scales(tiny_model, random_ids(tiny_model.config.vocab_size), START, END, branch="both")


# --- against the official algorithm, re-derived here (chenxinrui-tsinghua/LinearPatch @ d1274e8) --------------------
def butterfly_hadamard(n: int, core: torch.Tensor) -> torch.Tensor:
    """get_hadamard_matrix(n) by the official algorithm (rotate_utils/hadamard_utils.py:58-95): each row of the
    identity goes through the Walsh-Hadamard butterfly (pairs of neighbours -> sum, difference) until K entries are
    left per block, then the stored order-K matrix `core` mixes the K blocks; divided by sqrt(n)."""
    k = core.shape[0]
    x = torch.eye(n, dtype=torch.float64).reshape(n, n, 1)  # (rows, entries, block)
    while x.shape[1] > k:
        pairs = x.reshape(n, x.shape[1] // 2, 2, x.shape[2])
        x = torch.cat([pairs[:, :, 0] + pairs[:, :, 1], pairs[:, :, 0] - pairs[:, :, 1]], dim=2)
    return (core.double() @ x).reshape(n, n) / n**0.5


def paley_12() -> torch.Tensor:
    """A ±1 Hadamard matrix of order 12 by Paley's first construction (q = 11), written out independently."""
    q, squares = 11, {(j * j) % 11 for j in range(1, 11)}
    core = torch.eye(12, dtype=torch.float64)
    for i in range(12):
        for j in range(12):
            if i == j:
                continue
            if i == 0:
                core[i, j] = 1.0
            elif j == 0:
                core[i, j] = -1.0
            else:
                core[i, j] = 1.0 if ((j - i) % q) in squares else -1.0
    return core


@pytest.mark.parametrize("n", [4, 8, 64])
def test_hadamard_equals_the_official_butterfly(n):
    torch.testing.assert_close(hadamard_matrix(n), butterfly_hadamard(n, torch.ones(1, 1)), rtol=0, atol=1e-15)


def test_hadamard_of_a_non_power_of_two_width_is_the_butterfly_around_an_order_k_factor():
    """n = 12 x 4: the official code multiplies by its stored order-12 table (transposed, as its butterfly applies
    it to the identity's rows); ours builds the order-12 factor by Paley's construction. The same algorithm around
    another Hadamard factor (docs/deviations.md, LinearPatch)."""
    core = paley_12()
    assert torch.equal(core @ core.T, 12 * torch.eye(12, dtype=torch.float64))
    official_form = butterfly_hadamard(48, core.T.contiguous())
    torch.testing.assert_close(hadamard_matrix(48), official_form, rtol=0, atol=1e-15)
    assert torch.allclose(official_form @ official_form.T, torch.eye(48, dtype=torch.float64), atol=1e-12)


def official_scales(model, ids: torch.Tensor, i: int, j: int, hadamard: torch.Tensor) -> torch.Tensor:
    """layer_select.py:6-52 (`get_scale_params`, rotate=True): forward hooks keep the INPUT of layers i and j, rotated
    by H; per calibration batch of one sequence, mean |x_j H| / mean |x_i H| over tokens; averaged over batches."""
    kept: dict[int, torch.Tensor] = {}
    hooks = [
        model.model.layers[index].register_forward_hook(
            lambda _m, args, _out, index=index: kept.__setitem__(index, args[0].double() @ hadamard)
        )
        for index in (i, j)
    ]
    total = torch.zeros(hadamard.shape[0], dtype=torch.float64)
    try:
        for sequence in ids:
            with torch.no_grad():
                model(sequence[None])
            total += (kept[j].abs().mean(dim=(0, 1)) / kept[i].abs().mean(dim=(0, 1)))
    finally:
        for hook in hooks:
            hook.remove()
    return total / ids.shape[0]


def test_scales_equal_the_official_hooks(tiny_model, tmp_path):
    """Ours from the states (fit_scales) and from the cached pairs the healing job reads (fit.pair_scales) against
    the official hooks on the layers' inputs, one sequence per batch."""
    from streamline.healing.fit import pair_scales
    from streamline.healing.replace import cache_pairs

    ids = random_ids(tiny_model.config.vocab_size, seqs=5, length=20, seed=3)
    official = official_scales(tiny_model, ids, START, END, butterfly_hadamard(32, torch.ones(1, 1)))
    torch.testing.assert_close(fit_scales(tiny_model, ids, START, END, "residual", batch_size=2)[0], official)
    shards = cache_pairs(tiny_model, ids, START, END, tmp_path / "pairs", shard_sequences=2)
    torch.testing.assert_close(pair_scales(shards, hadamard_matrix(32))[0], official)


def test_healed_checkpoint_equals_the_official_patch_hook(tiny_model, tiny_checkpoint, tmp_path):
    """The `linearpatch` healing job's checkpoint against the official inference: P = H diag(s) Hᵀ
    (block_scaling.py:6-10) applied by a forward hook to the output of the layer before the window
    (block_scaling.py:28-45), the window's layers removed (main_distill.py:180) -- all built here."""
    from streamline.healing.heal import run_healing
    from streamline.healing.training import TrainConfig

    vocab = tiny_model.config.vocab_size
    train_ids, val_ids = random_ids(vocab, seqs=6, length=20, seed=4), random_ids(vocab, seqs=2, length=20, seed=5)
    plan = {"healing": "linearpatch", "start_layer": START, "num_layers_removed": END - START,
            "removed_layers": list(range(START, END))}
    run_healing(tiny_checkpoint, plan, "linearpatch", train_ids, val_ids, tmp_path / "lp",
                cfg=TrainConfig(batch_size=4, progress=False), shard_sequences=4)
    hadamard = butterfly_hadamard(32, torch.ones(1, 1))
    patch = hadamard @ torch.diag(official_scales(tiny_model, train_ids, START, END, hadamard)) @ hadamard.T

    def hook(_module, _args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        patched = (hidden.double() @ patch).to(hidden.dtype)
        return (patched, *output[1:]) if isinstance(output, tuple) else patched

    official = make_model(vocab)  # the dense weights again (same seed)
    keep_layers(official, [i for i in range(6) if not START <= i < END])
    handle = official.model.layers[START - 1].register_forward_hook(hook)
    probe = random_ids(vocab, seqs=2, seed=7)
    with torch.no_grad():
        expected = official(probe).logits
    handle.remove()
    healed, _ = load_model(tmp_path / "lp", torch.float32, "cpu")
    with torch.no_grad():
        torch.testing.assert_close(healed(probe).logits, expected, rtol=1e-4, atol=1e-4)
