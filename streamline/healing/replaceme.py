"""ReplaceMe (Shopkhoev et al. 2025): a pruned window becomes one linear map, fused into the preceding MLP.

Official code: github.com/mts-ai/ReplaceMe @ 5bb71d99 (2025-05-22).
- Activations, ReplaceMe/lstsq.py:122-137 and 182-203: a forward hook on every `layer.mlp` keeps the MLP output;
  for a window that removes layers start..end-1 (utils.py:53-60 `truncate_model`, blocks from
  `select_non_overlapping_blocks` utils.py:361-363), M = MLP output of layer start-1, h_i = output of layer
  start-1 (= h_start), h_n = output of layer end-1 (= h_end). Regression input a1 = M, target
  a2 = h_end + M - h_start = h_end - Y, where Y = h_start - M is the residual before that MLP (lstsq.py:202-203).
- Least squares, lstsq.py:154-161, 208-209, 221-222: float64 normal equations accumulated over batches,
  T = inv(MᵀM + alpha I) Mᵀ(h_end - Y), alpha = 0 by default (examples/*lstsq.yaml).
- Cosine variant, cosine_dist.py:189-207 + utils.py:241-290 (`adam_method`, loss "cosine", solver "adam"):
  nn.Linear(d, d, bias=False) initialised to the identity, Adam lr 1e-4, batch 1024 rows shuffled, 10 epochs,
  loss 1 - mean cos(M T, h_end - Y) ("accurate: False", reproduce/Replace_Me_pipeline_cosine.yaml); T = weight.T.
- Fusion, lstsq.py:240-246 (cosine_dist.py:233-235): layers[start-1].mlp.down_proj.weight <- Tᵀ W (float64
  product), then the window's layers are removed. With M = x Wᵀ, M T = x (Tᵀ W)ᵀ, so the fused layer outputs
  Y + M T and the checkpoint keeps the stock architecture.

Deviations (calibration data and size, precision, targets, solve, one window): docs/deviations.md, "ReplaceMe";
tests/test_replaceme.py rebuilds the official a1/a2 from `output_hidden_states` and an `mlp` hook.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedModel

from streamline.acquisition.families import decoder_layers, mlp_down_proj, mlp_output
from streamline.healing.training import peak_memory
from streamline.importance.hidden_states import residual_states
from streamline.pruning.surgery import drop_layers

REPLACEME_SOLVERS = ("lstsq", "cosine")  # lstsq.py (closed form) and cosine_dist.py (Adam on cosine distance)
COSINE_EPOCHS = 10  # utils.py:266
COSINE_LR = 1e-4  # utils.py:246
COSINE_BATCH_ROWS = 1024  # utils.py:264


def check_window(model: PreTrainedModel, start: int, end: int) -> None:
    """A window start..end-1 with a preceding layer whose MLP can absorb the map."""
    total = len(decoder_layers(model))
    if not 1 <= start < end <= total:
        raise ValueError(
            f"window layers {start}..{end - 1}: a fit needs a layer before the window, 1 <= start < end <= {total}"
        )


@torch.no_grad()
def window_activations(
    model: PreTrainedModel, input_ids: torch.Tensor, start: int, end: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(M, Y, h_end) for one batch, each (B*T, d) float32: MLP output of layer start-1, residual before it, target."""
    check_window(model, start, end)
    grabbed: list[torch.Tensor] = []
    handle = mlp_output(decoder_layers(model)[start - 1]).register_forward_hook(lambda _m, _a, out: grabbed.append(out))
    try:
        states = residual_states(model, input_ids, upto=end)  # h_0 .. h_end, each (B, T, d)
    finally:
        handle.remove()
    d = states[start].shape[-1]
    mlp_out = grabbed[0].reshape(-1, d).float()  # (N, d)
    before = states[start].reshape(-1, d).float() - mlp_out  # Y = h_start - M, (N, d)
    return mlp_out, before, states[end].reshape(-1, d).float()


@dataclass(frozen=True)
class Moments:
    """The sufficient statistics of the least-squares problem M T ≈ R, R = h_end - Y, over `tokens` rows."""

    xtx: torch.Tensor  # MᵀM, (d, d) float64
    xty: torch.Tensor  # MᵀR, (d, d) float64
    rr: float  # ||R||²
    tokens: int

    def mse(self, transform: torch.Tensor | None = None) -> float:
        """Mean of (M T - R)² over tokens and channels; T None is the identity, i.e. plain removal (h_start vs h_end)."""
        d = self.xtx.shape[0]
        t = torch.eye(d, dtype=torch.float64) if transform is None else transform.double().cpu()
        squared = torch.trace(t.T @ self.xtx @ t) - 2 * torch.trace(t.T @ self.xty) + self.rr
        return float(squared) / (self.tokens * d)


def normal_equations(model: PreTrainedModel, input_ids: torch.Tensor, start: int, end: int, batch_size: int) -> Moments:
    """MᵀM, Mᵀ(h_end - Y) (float64) and ||h_end - Y||², accumulated batch by batch as lstsq.py:208-209 does."""
    d = model.config.hidden_size
    xtx = torch.zeros(d, d, dtype=torch.float64)  # (d, d)
    xty = torch.zeros(d, d, dtype=torch.float64)  # (d, d)
    rr, tokens = 0.0, 0
    for batch in input_ids.split(batch_size):
        mlp_out, before, target = window_activations(model, batch, start, end)
        x = mlp_out.double().cpu()  # (N, d)
        r = (target - before).double().cpu()  # (N, d)
        xtx += x.T @ x
        xty += x.T @ r
        rr += float((r**2).sum())
        tokens += x.shape[0]
    return Moments(xtx, xty, rr, tokens)


def solve_normal_equations(xtx: torch.Tensor, xty: torch.Tensor, alpha: float = 0.0) -> torch.Tensor:
    """T (d, d) float64 minimising ||M T - (h_end - Y)||² + alpha ||T||² (lstsq.py:221-222)."""
    eye = torch.eye(xtx.shape[0], dtype=torch.float64)
    return torch.linalg.solve(xtx.double() + alpha * eye, xty.double())


def cosine_map(
    mlp_out: torch.Tensor,
    target: torch.Tensor,
    epochs: int = COSINE_EPOCHS,
    lr: float = COSINE_LR,
    batch_rows: int = COSINE_BATCH_ROWS,
    seed: int = 0,
) -> torch.Tensor:
    """T (d, d) float64 minimising 1 - mean cos(M T, target) by Adam from the identity (utils.py:212-290).

    `mlp_out` and `target` are (N, d); target = h_end - Y.
    """
    generator = torch.Generator().manual_seed(seed)
    d = mlp_out.shape[1]
    weight = torch.eye(d, dtype=torch.float32, device=mlp_out.device, requires_grad=True)  # nn.Linear weight (out, in)
    optimizer = torch.optim.Adam([weight], lr=lr)
    for _ in range(epochs):
        order = torch.randperm(mlp_out.shape[0], generator=generator).to(mlp_out.device)
        for lo in range(0, len(order), batch_rows):
            rows = order[lo : lo + batch_rows]
            mapped = mlp_out[rows].float() @ weight.T  # (b, d)
            loss = 1 - torch.nn.functional.cosine_similarity(mapped, target[rows].float(), dim=1).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return weight.detach().T.double()


@contextmanager
def mapped_mlp(model: PreTrainedModel, layer: int, transform: torch.Tensor) -> Iterator[None]:
    """Run `model` with layer `layer`'s MLP output right-multiplied by `transform` (the unfused ReplaceMe)."""
    mlp = mlp_output(decoder_layers(model)[layer])

    def hook(_module, _args, output: torch.Tensor) -> torch.Tensor:
        return (output.double() @ transform.to(output.device)).to(output.dtype)  # (B, T, d)

    handle = mlp.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@torch.no_grad()
def fuse_into_down_proj(model: PreTrainedModel, layer: int, transform: torch.Tensor) -> None:
    """down_proj.weight <- Tᵀ W (lstsq.py:242-246): the layer's MLP then outputs M T; W is (d, d_ff)."""
    proj = mlp_down_proj(decoder_layers(model)[layer])
    fused = transform.T.double().to(proj.weight.device) @ proj.weight.double()  # (d, d) @ (d, d_ff)
    proj.weight.copy_(fused.to(proj.weight.dtype))
    if getattr(proj, "bias", None) is not None:  # M = x Wᵀ + b, so M T needs b T as well
        proj.bias.copy_((proj.bias.double() @ transform.double().to(proj.bias.device)).to(proj.bias.dtype))


def window_mse(
    mlp_out: torch.Tensor, before: torch.Tensor, target: torch.Tensor, transform: torch.Tensor | None
) -> float:
    """Mean squared error of h_start (transform None: plain removal) or Y + M T against h_end."""
    mapped = mlp_out if transform is None else mlp_out.double() @ transform.double().to(mlp_out.device)
    return float(((before.double() + mapped.double() - target.double()) ** 2).mean())


def fit_map(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    start: int,
    end: int,
    solver: str = "lstsq",
    batch_size: int = 8,
    alpha: float = 0.0,
    seed: int = 0,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Fit T (d, d) float64 on `input_ids` (S, T) for the window start..end-1; `model` is left unchanged.

    Returns T and the fit statistics (fit seconds, peak RSS, calibration tokens, window MSE of plain removal and of
    the map on the calibration tokens); one forward pass up to layer `end` per calibration batch.
    """
    if solver not in REPLACEME_SOLVERS:
        raise ValueError(f"replaceme solver {solver!r} is unknown; allowed: {', '.join(REPLACEME_SOLVERS)}")
    check_window(model, start, end)
    started = time.perf_counter()
    if solver == "lstsq":
        moments = normal_equations(model, input_ids, start, end, batch_size)
        transform = solve_normal_equations(moments.xtx, moments.xty, alpha)
        tokens, removed, fitted = moments.tokens, moments.mse(None), moments.mse(transform)
    else:
        parts = [window_activations(model, batch, start, end) for batch in input_ids.split(batch_size)]
        mlp_out, before, target = (torch.cat([p[i] for p in parts]) for i in range(3))  # (N, d) each
        tokens = mlp_out.shape[0]
        transform = cosine_map(mlp_out, target - before, seed=seed)
        removed, fitted = window_mse(mlp_out, before, target, None), window_mse(mlp_out, before, target, transform)
    stats = {
        "method": f"replaceme_{solver}",
        "window": [start, end],
        "fit_seconds": time.perf_counter() - started,
        **peak_memory(),
        "calibration_tokens": tokens,
        "window_mse_removed": removed,
        "window_mse_fitted": fitted,
    }
    return transform, stats


def replaceme(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    start: int,
    end: int,
    solver: str = "lstsq",
    batch_size: int = 8,
    alpha: float = 0.0,
    seed: int = 0,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """fit_map, then fuse T into layer start-1's down_proj and remove the window from `model` (in place)."""
    transform, stats = fit_map(model, input_ids, start, end, solver, batch_size, alpha, seed)
    fuse_into_down_proj(model, start - 1, transform)
    drop_layers(model, range(start, end))
    return transform, stats
