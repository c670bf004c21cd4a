"""The window table: the score of every window (start layer i, n layers) from the mean pair similarities, the
most redundant window of a length, its CSV and heatmap. Plain pandas: the `prune` job and Snakemake's parse read
it without torch (scores.py computes the similarities)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from streamline.atomic import write_with

# cosine: the paper's mean cosine over all tokens; angular: mean arccos(cos)/pi over all tokens;
# angular_last: the same at the last token only (Gromov et al.).
METRICS = ("cosine", "angular", "angular_last")
# Which end of the score marks the most redundant window (calibration_nll: the ppl-window criterion's table).
MOST_REDUNDANT = {"cosine": "max", "angular": "min", "angular_last": "min", "calibration_nll": "min"}



def window_table(pair_mean: Any, metric: str) -> pd.DataFrame:
    """Every window (start_layer i, num_layers n), n in 1..L-1: score = pair_mean[i, i+n] ((L+1, L+1) tensor or
    array of the mean pair similarities)."""
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
