"""Figures from all.csv: accuracy, relative accuracy, stability and perplexity vs sparsity; healing cost."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from streamline.atomic import read_json, write_with  # noqa: E402
from streamline.importance.scores import heatmap_figure  # noqa: E402
from streamline.reporting.tables import VARIANT_KEYS, main_table, with_targets  # noqa: E402


def save(fig, png: str | Path, pdf: str | Path, dpi: int) -> None:
    fig.tight_layout()
    write_with(png, lambda tmp: fig.savefig(tmp, dpi=dpi))
    write_with(pdf, lambda tmp: fig.savefig(tmp))
    plt.close(fig)


def _with_x(frame: pd.DataFrame, table: pd.DataFrame) -> pd.DataFrame:
    """`frame` (one row per variant, targets filled) with its x position: the target sparsity, or for a
    layer-count target (l{n}) the sparsity it achieved (all.csv's actual_sparsity)."""
    actual = with_targets(table).drop_duplicates(VARIANT_KEYS)[VARIANT_KEYS + ["actual_sparsity"]]
    out = frame.merge(actual, on=VARIANT_KEYS, how="left")
    out["x"] = out["target_sparsity"].where(out["target_layers"] == 0, out["actual_sparsity"])
    return out


def _lines(frame: pd.DataFrame, value: str, ylabel: str, title: str, logy: bool = False):
    """One line per (model, method, healing, target kind) over sparsity; the dense point (sparsity 0) starts every
    line. Layer-count targets (l{n}) form their own line at their achieved sparsity."""
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    frame = frame.assign(by_layers=frame["target_layers"] > 0)
    for model, per_model in frame.groupby("model"):
        dense = per_model[per_model["method"] == "dense"]
        compressed = per_model[per_model["method"] != "dense"]
        for (method, healing, by_layers), rows in compressed.groupby(["method", "healing", "by_layers"]):
            points = pd.concat([dense, rows]).sort_values("x")
            label = f"{method} + {healing}" + (" (layer counts)" if by_layers else "")
            label = label if frame["model"].nunique() == 1 else f"{model}: {label}"
            ax.plot(points["x"], points[value], marker="o", linestyle="--" if by_layers else "-", label=label)
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel("sparsity (target; achieved for layer-count targets)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def accuracy_vs_sparsity(all_csv: str | Path, png: str | Path, pdf: str | Path, relative: bool, dpi: int = 150) -> None:
    table = pd.read_csv(all_csv)
    frame = _with_x(main_table(table), table)
    if relative:
        fig = _lines(frame, "RA", "relative accuracy (% of dense Avg)", "Relative accuracy vs sparsity")
    else:
        fig = _lines(frame, "Avg", "average zero-shot accuracy (%)", "Average accuracy vs sparsity")
    save(fig, png, pdf, dpi)


def stability_vs_sparsity(all_csv: str | Path, png: str | Path, pdf: str | Path, dpi: int = 150) -> None:
    table = pd.read_csv(all_csv)
    rows = with_targets(table[table["metric"] == "stability"])
    frame = _with_x(rows.groupby(VARIANT_KEYS, as_index=False)["value"].mean(), table)
    frame["value"] *= 100
    save(_lines(frame, "value", "stability vs dense, mean over tasks (%)", "Stability vs sparsity"), png, pdf, dpi)


def perplexity_vs_sparsity(all_csv: str | Path, png: str | Path, pdf: str | Path, dpi: int = 150) -> None:
    table = pd.read_csv(all_csv)
    frame = _with_x(with_targets(table[table["metric"] == "perplexity"])[[*VARIANT_KEYS, "value"]], table)
    save(
        _lines(frame, "value", "WikiText-2 perplexity (log scale)", "Perplexity vs sparsity", logy=True), png, pdf, dpi
    )


def healing_cost(all_csv: str | Path, png: str | Path, pdf: str | Path, dpi: int = 150) -> None:
    """Training seconds of each healing run vs the accuracy it recovers over plain removal (`none`)."""
    table = pd.read_csv(all_csv)
    accuracy = main_table(table)
    seconds = with_targets(table[table["metric"] == "train_seconds"])[[*VARIANT_KEYS, "value"]]
    merged = accuracy.merge(seconds.rename(columns={"value": "train_seconds"}))
    baseline = accuracy[accuracy["healing"] == "none"][["model", "method", "target_sparsity", "target_layers", "Avg"]]
    merged = merged.merge(baseline.rename(columns={"Avg": "Avg_none"}), how="left")
    merged["recovered"] = merged["Avg"] - merged["Avg_none"]
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for healing, rows in merged[merged["healing"] != "none"].groupby("healing"):
        ax.scatter(rows["train_seconds"], rows["recovered"], label=healing, s=40)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xlabel("healing training time (s)")
    ax.set_ylabel("average accuracy recovered over plain removal (points)")
    ax.set_title("Healing cost vs recovered accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save(fig, png, pdf, dpi)


def importance_with_windows(
    scores_csv: str | Path, plans: list[str | Path], png: str | Path, pdf: str | Path, model: str, dpi: int = 150
) -> None:
    """The importance heatmap with the window each window-method plan removed marked."""
    windows = [p for p in map(read_json, plans) if p.get("start_layer") is not None]
    marked = sorted({(p["start_layer"], p["num_layers_removed"]) for p in windows})
    title = f"{model}: cosine similarity of layer windows (red: removed windows)"
    save(heatmap_figure(pd.read_csv(scores_csv), title, marked), png, pdf, dpi)
