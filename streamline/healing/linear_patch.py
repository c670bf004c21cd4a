"""LinearPatch (Chen et al., NeurIPS 2025): a symmetric patch P = H diag(s) Hᵀ at the pruning interface.

Official code: github.com/chenxinrui-tsinghua/LinearPatch @ d1274e87 (2025-12-05), training-free mode
(`--insert_type rotate --distill_type train_free`, scripts/run_llama2-7b.sh:1-17).
- Hadamard matrix, rotate_utils/hadamard_utils.py:58-95: `get_hadamard_matrix(n)` = the normalised transform of the
  identity; a Sylvester matrix for n = 2^m, otherwise a stored order-K matrix (K in 12, 20, 28, 36, 40, 52, 60, 108,
  140, 156, 172; get_hadK lines 5-55) combined with the Sylvester butterfly for the remaining 2^m.
- Scales, layer_select.py:6-52 (`get_scale_params`): hooks keep the INPUT of layer i = start (h_start) and of layer
  j = end (h_end), both right-multiplied by H; per calibration batch (batch size 1: one sequence) the channel scale
  is mean|h_end H| / mean|h_start H| over tokens; the scales are averaged over 128 sequences.
- Patch, block_scaling.py:6-45: P = H diag(s) Hᵀ (`generate_symmetric_matrix`), applied as x @ P in a forward hook
  on the output of the layer before the window (pruned index start-1), i.e. on the whole residual stream h_start.
- Window, main_distill.py:168-185: layers start..end-1 removed (layer_select.py:54-95 picks the window by cosine
  similarity; here the project's criteria pick it).

Deviations (calibration, the order-K Hadamard factor for non-power-of-two widths, storage as the `linear` extra,
precision; this project's stock-fusable branch "mlp"): docs/deviations.md, "LinearPatch"; tests/test_linear_patch.py
re-derives the butterfly and the scales from the official algorithm.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from transformers import PreTrainedModel

from streamline.acquisition.checkpoint import ResidualLinear
from streamline.acquisition.families import decoder_layers
from streamline.healing.replaceme import check_window, fuse_into_down_proj, window_activations
from streamline.healing.training import peak_memory
from streamline.importance.hidden_states import residual_states
from streamline.pruning.surgery import drop_layers

PATCH_BRANCHES = ("mlp", "residual")  # mlp: fusable into the stock checkpoint; residual: the official hook


def _is_prime(q: int) -> bool:
    return q >= 2 and all(q % k for k in range(2, int(q**0.5) + 1))


def _jacobsthal(q: int) -> torch.Tensor:
    """Q[i, j] = chi(j - i), chi the quadratic character mod the prime q."""
    residues = {(k * k) % q for k in range(1, q)}
    chi = torch.tensor([0.0] + [1.0 if k in residues else -1.0 for k in range(1, q)], dtype=torch.float64)
    idx = torch.arange(q)
    return chi[(idx[None, :] - idx[:, None]) % q]


def _paley(order: int) -> torch.Tensor | None:
    """A ±1 Hadamard matrix of `order` by Paley I or II, or None if neither applies."""
    q = order - 1
    if _is_prime(q) and q % 4 == 3:  # Paley I
        s = torch.zeros(order, order, dtype=torch.float64)
        s[0, 1:], s[1:, 0], s[1:, 1:] = 1.0, -1.0, _jacobsthal(q)
        return torch.eye(order, dtype=torch.float64) + s
    q = order // 2 - 1
    if order % 2 == 0 and _is_prime(q) and q % 4 == 1:  # Paley II
        c = torch.zeros(q + 1, q + 1, dtype=torch.float64)
        c[0, 1:], c[1:, 0], c[1:, 1:] = 1.0, 1.0, _jacobsthal(q)
        a = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64)
        b = torch.tensor([[1.0, -1.0], [-1.0, -1.0]], dtype=torch.float64)
        return torch.kron(c, a) + torch.kron(torch.eye(q + 1, dtype=torch.float64), b)
    return None


def hadamard_matrix(n: int) -> torch.Tensor:
    """Orthonormal Hadamard matrix (n, n) float64: H_K ⊗ Sylvester(2^m) / sqrt(n), 2^m the largest that works."""
    for m in range(n.bit_length(), -1, -1):
        if n % 2**m:
            continue
        k = n // 2**m
        core = torch.ones(1, 1, dtype=torch.float64) if k == 1 else _paley(k)
        if core is None:
            continue
        sylvester = torch.ones(1, 1, dtype=torch.float64)
        while sylvester.shape[0] < 2**m:
            sylvester = torch.kron(torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64), sylvester)
        return torch.kron(core, sylvester) / n**0.5
    raise ValueError(f"hidden size {n} has no Hadamard matrix here (needs n = K 2^m with a Paley order K)")


def patch_matrix(scales: torch.Tensor, hadamard: torch.Tensor) -> torch.Tensor:
    """P = H diag(s) Hᵀ (d, d), symmetric (block_scaling.py:6-10)."""
    return hadamard @ torch.diag(scales.double()) @ hadamard.T


def sequence_scales(source: torch.Tensor, target: torch.Tensor, hadamard: torch.Tensor) -> torch.Tensor:
    """Per-sequence channel scales (S, d): mean over tokens of |target H| over that of |source H| (inputs (S, T, d))."""
    num = (target.double() @ hadamard).abs().mean(dim=1)  # (S, d)
    den = (source.double() @ hadamard).abs().mean(dim=1)  # (S, d)
    return num / den


@torch.no_grad()
def fit_scales(
    model: PreTrainedModel, input_ids: torch.Tensor, start: int, end: int, branch: str = "mlp", batch_size: int = 8
) -> tuple[torch.Tensor, int]:
    """Channel scales s (d,) averaged over the calibration sequences, and the tokens they saw.

    branch "residual": source h_start, target h_end (layer_select.py:33-46); branch "mlp": source M, target h_end - Y.
    """
    if branch not in PATCH_BRANCHES:
        raise ValueError(f"linear_patch branch {branch!r} is unknown; allowed: {', '.join(PATCH_BRANCHES)}")
    check_window(model, start, end)
    hadamard = hadamard_matrix(model.config.hidden_size)
    per_sequence = []
    for batch in input_ids.split(batch_size):
        seqs, length = batch.shape
        if branch == "residual":
            states = residual_states(model, batch, upto=end)
            source, target = states[start], states[end]  # (S, T, d)
        else:
            mlp_out, before, h_end = window_activations(model, batch, start, end)  # (S*T, d) each
            source, target = mlp_out.view(seqs, length, -1), (h_end - before).view(seqs, length, -1)
        per_sequence.append(sequence_scales(source.cpu(), target.cpu(), hadamard))
    return torch.cat(per_sequence).mean(dim=0), input_ids.numel()


@contextmanager
def residual_patched(model: PreTrainedModel, layer: int, patch: torch.Tensor) -> Iterator[None]:
    """The official, unfused form: layer `layer`'s output hidden state right-multiplied by P (block_scaling.py:28-45)."""

    def hook(_module, _args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        patched = (hidden.double() @ patch.to(hidden.device)).to(hidden.dtype)  # (B, T, d)
        return (patched, *output[1:]) if isinstance(output, tuple) else patched

    handle = decoder_layers(model)[layer].register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def patch_module(patch: torch.Tensor) -> ResidualLinear:
    """The residual patch as the project's stored `linear` extra: x + x Wᵀ = x P with W = (P - I)ᵀ.

    save_checkpoint(..., extra=(module, start)) stores it; load_model re-attaches it before pruned layer `start`
    (= on the output of layer start-1, where block_scaling.py:35-43 hooks it).
    """
    module = ResidualLinear(patch.shape[0])
    with torch.no_grad():
        module.weight.copy_((patch.double() - torch.eye(patch.shape[0], dtype=torch.float64)).T.float())
    return module


def linear_patch(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    start: int,
    end: int,
    branch: str = "residual",
    batch_size: int = 8,
) -> tuple[torch.Tensor, dict[str, Any], ResidualLinear | None]:
    """Fit the patch for the window start..end-1 on `input_ids` (S, T), then remove the window from `model`.

    branch "residual" (official): returns the patch module to save as the `linear` extra at position `start`
    (the model itself is left as plain removal). branch "mlp": the patch is fused into layer start-1's down_proj
    (stock checkpoint) and no module is returned. Also returns P (d, d) float64 and the fit statistics.
    """
    started = time.perf_counter()
    scales, tokens = fit_scales(model, input_ids, start, end, branch, batch_size)
    patch = patch_matrix(scales, hadamard_matrix(model.config.hidden_size))
    stats = {
        "method": f"linear_patch_{branch}",
        "window": [start, end],
        "fit_seconds": time.perf_counter() - started,
        **peak_memory(),
        "calibration_tokens": tokens,
        "scale_min": float(scales.min()),
        "scale_max": float(scales.max()),
    }
    module = None
    if branch == "mlp":
        fuse_into_down_proj(model, start - 1, patch)
    else:
        module = patch_module(patch)
    drop_layers(model, range(start, end))
    return patch, stats, module
