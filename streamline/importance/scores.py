"""Layer importance: similarity between the state entering a window of layers and the state leaving it."""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from tqdm import tqdm
from transformers import PreTrainedModel

from streamline.atomic import write_with
from streamline.importance.hidden_states import residual_states
from streamline.numerics import NonFiniteError, nonfinite_cause

# cosine: the paper's mean cosine over all tokens; angular: mean arccos(cos)/pi over all tokens;
# angular_last: the same at the last token only (Gromov et al.).
METRICS = ("cosine", "angular", "angular_last")
# Which end of the score marks the most redundant window (calibration_nll: the ppl-window criterion's table).
MOST_REDUNDANT = {"cosine": "max", "angular": "min", "angular_last": "min", "calibration_nll": "min"}


class WindowSimilarity:
    """Streaming sums of per-token cosine similarity between every pair of residual states.

    Memory is O(S^2) for S = L+1 states, whatever the number of calibration samples: each batch is
    reduced to pair sums before the next one is read.
    """

    def __init__(self, num_states: int, token_chunk: int = 4096):
        self.num_states = num_states
        self.token_chunk = token_chunk
        self.cos_sum = torch.zeros(num_states, num_states, dtype=torch.float64)
        self.angle_sum = torch.zeros_like(self.cos_sum)
        self.last_angle_sum = torch.zeros_like(self.cos_sum)
        self.tokens = 0
        self.sequences = 0

    @staticmethod
    def _pair_cosines(states: torch.Tensor) -> torch.Tensor:
        """states (S, N, D) -> per-token cosine for every state pair, (S, S, N), clamped to [-1, 1]."""
        unit = F.normalize(states.float(), dim=-1)
        return torch.einsum("and,bnd->abn", unit, unit).clamp_(-1.0, 1.0)

    def update(self, states: list[torch.Tensor]) -> None:
        stacked = torch.stack([s.to(states[0].device) for s in states])  # (S, B, T, D); layers may sit on several GPUs
        num_states, batch, seq, dim = stacked.shape
        flat = stacked.reshape(num_states, batch * seq, dim)
        for lo in range(0, flat.shape[1], self.token_chunk):
            cos = self._pair_cosines(flat[:, lo : lo + self.token_chunk])
            self.cos_sum += cos.sum(-1).double()
            self.angle_sum += torch.arccos_(cos).sum(-1).double() / math.pi
        last = self._pair_cosines(stacked[:, :, -1, :])
        self.last_angle_sum += torch.arccos_(last).sum(-1).double() / math.pi
        # A NaN/inf anywhere in the states makes its cosines NaN, so checking the sums is enough.
        if not torch.isfinite(self.cos_sum).all():
            first = next((i for i, s in enumerate(states) if not torch.isfinite(s).all()), 0)
            raise NonFiniteError(
                f"the hidden state h_{first} ({'the embeddings' if first == 0 else f'leaving layer {first - 1}'}) "
                f"holds NaN/Inf ({nonfinite_cause(states[first].dtype)})"
            )
        self.tokens += batch * seq
        self.sequences += batch

    def mean(self, metric: str) -> torch.Tensor:
        """(S, S) mean of `metric` for every state pair."""
        if metric == "cosine":
            return self.cos_sum / self.tokens
        if metric == "angular":
            return self.angle_sum / self.tokens
        if metric == "angular_last":
            return self.last_angle_sum / self.sequences
        raise ValueError(f"importance metric {metric!r} is unknown; allowed: {', '.join(METRICS)}")


def accumulate(model: PreTrainedModel, batches: Iterable[torch.Tensor], progress: bool = True) -> WindowSimilarity:
    """One forward pass per batch; returns the streaming pair sums of every residual state."""
    num_states = model.config.num_hidden_layers + 1
    acc = WindowSimilarity(num_states)
    for batch in tqdm(list(batches), desc="importance", disable=not progress):
        acc.update(residual_states(model, batch))
    return acc


def window_table(pair_mean: torch.Tensor, metric: str) -> pd.DataFrame:
    """Every window (start_layer i, num_layers n), n in 1..L-1: score = pair_mean[i, i+n]."""
    num_layers = pair_mean.shape[0] - 1
    rows = [
        (start, n, float(pair_mean[start, start + n]), metric)
        for n in range(1, num_layers)
        for start in range(0, num_layers - n + 1)
    ]
    return pd.DataFrame(rows, columns=["start_layer", "num_layers", "score", "metric"])


def best_window(table: pd.DataFrame, num_layers: int) -> pd.Series:
    """The most redundant window of length `num_layers` (lowest start wins a tie)."""
    rows = table[table["num_layers"] == num_layers]
    if rows.empty:
        raise ValueError(f"no window of {num_layers} layers in the importance table")
    metric = rows["metric"].iloc[0]
    order = rows["score"] if MOST_REDUNDANT[metric] == "max" else -rows["score"]
    return rows.loc[order.idxmax()]


def write_table(table: pd.DataFrame, path: str | Path) -> None:
    write_with(path, lambda tmp: table.to_csv(tmp, index=False, float_format="%.8f"))


def heatmap_figure(table: pd.DataFrame, title: str, marked: Iterable[tuple[int, int]] = ()):
    """Start layer (x) x window length (y) heatmap of the scores, like the paper's figure.

    `marked` windows (start, length) get a red square: the windows a pruning plan removed.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = table.pivot(index="num_layers", columns="start_layer", values="score")
    starts, lengths = list(grid.columns), list(grid.index)
    fig, ax = plt.subplots(figsize=(8, 6))
    image = ax.imshow(grid.values, origin="lower", aspect="auto", cmap="viridis")
    step_x, step_y = max(1, len(starts) // 15), max(1, len(lengths) // 15)
    ax.set_xticks(range(len(starts))[::step_x], starts[::step_x])
    ax.set_yticks(range(len(lengths))[::step_y], lengths[::step_y])
    ax.set_xlabel("start layer")
    ax.set_ylabel("window length (layers)")
    metric = table["metric"].iloc[0]
    direction = "higher" if MOST_REDUNDANT[metric] == "max" else "lower"
    fig.colorbar(image, ax=ax, label=f"{metric} ({direction} = more redundant)")
    for start, n in marked:
        ax.plot(starts.index(start), lengths.index(n), marker="s", mfc="none", mec="red", ms=12, mew=2)
    ax.set_title(title)
    fig.tight_layout()
    return fig


def plot_heatmap(table: pd.DataFrame, path: str | Path, title: str) -> None:
    import matplotlib.pyplot as plt

    fig = heatmap_figure(table, title)
    write_with(path, lambda tmp: fig.savefig(tmp, dpi=120))
    plt.close(fig)
