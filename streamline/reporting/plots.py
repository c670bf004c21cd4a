"""Figures, one function per concept, drawn from a variant frame (frame.py) with the intervals paired.csv gives:
metrics against sparsity, the healing cost, the training-data size and the importance heatmap. The experiment's
plots (`FIGURES`, one rule) and the paper's figures (paper.py) both call these."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from streamline.atomic import read_json, write_with  # noqa: E402
from streamline.reporting.frame import base_budget  # noqa: E402


def missing_line(what: str, key: str) -> str:
    """One line naming missing rows and the config key that adds them."""
    return f"missing: {what} (add it with config `{key}`)"


def save(fig, png: str | Path, pdf: str | Path, dpi: int) -> None:
    """Write the figure (laid out by the function that drew it) as PNG and PDF atomically."""
    write_with(png, lambda tmp: fig.savefig(tmp, dpi=dpi))
    write_with(pdf, lambda tmp: fig.savefig(tmp))
    plt.close(fig)


def styles(keys: list[tuple[str, str]]) -> dict[tuple[str, str], dict]:
    """Colour per method, line style and marker per healing, so a reader can decode both; with one method the
    colour follows the healing too."""
    methods = list(dict.fromkeys(m for m, _ in keys))
    healings = list(dict.fromkeys(h for _, h in keys))
    colours = plt.get_cmap("tab10")
    lines = ["-", "--", ":", "-.", (0, (5, 1)), (0, (3, 1, 1, 1, 1, 1))]
    markers = ["o", "s", "^", "D", "v", "P", "X", "*"]
    colour_of = (lambda m, h: healings.index(h)) if len(methods) == 1 else (lambda m, h: methods.index(m))
    return {
        (m, h): {
            "color": colours(colour_of(m, h) % 10),
            "linestyle": lines[healings.index(h) % len(lines)],
            "marker": markers[healings.index(h) % len(markers)],
        }
        for m, h in keys
    }


def plain_log(ax, axis: str = "y") -> None:
    """A log axis labelled with plain numbers (30, 100, 300) instead of 3 x 10^1."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    target = ax.yaxis if axis == "y" else ax.xaxis
    (ax.set_yscale if axis == "y" else ax.set_xscale)("log")
    target.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    target.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.10g}"))
    target.set_minor_formatter(NullFormatter())


def error_bars(rows: pd.DataFrame, column: str, kind: str = "") -> np.ndarray | None:
    """(2, n) distances from each value to its interval's ends (`kind` "removal_": of the difference from plain
    removal), or None where the frame has no intervals."""
    low, high = f"{column}:{kind}low", f"{column}:{kind}high"
    if low not in rows:
        return None
    centre = rows[f"{column}:{kind}difference"] if kind else rows[column]
    return np.vstack([(centre - rows[low]).clip(lower=0), (rows[high] - centre).clip(lower=0)]).astype(float)


def sparsity_label(frame: pd.DataFrame) -> str:
    """The x label: what the sparsity is a fraction of (all.csv's sparsity_of)."""
    of = set(frame.get("sparsity_of", pd.Series(dtype=str)).dropna()) - {""}
    what = {"layers": "decoder-layer parameters", "all": "all parameters"}
    return f"sparsity (% of {' / '.join(what.get(o, o) for o in sorted(of)) or 'parameters'} removed)"


def _legend_below(fig, axes, handles_from) -> None:
    handles, labels = handles_from.get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(6, len(labels)), fontsize=8, frameon=False)
    rows_of_legend = math.ceil(len(labels) / 6) if handles else 0
    fig.tight_layout(rect=(0, 0.06 + 0.035 * rows_of_legend, 1, 0.95))


def sparsity_figure(frame: pd.DataFrame, panels: list[tuple[str, str, bool]], title: str):
    """Each panel (column, y label, log y) against sparsity, one line per (model, method, healing), base budget;
    every line starts at the dense model (sparsity 0); layer-count targets (l{n}) form their own dashed line at
    their achieved sparsity. Error bars: each value's 95% interval (paired.csv)."""
    frame = base_budget(frame).assign(by_layers=lambda f: f["target_layers"] > 0)
    fig, axes = plt.subplots(1, len(panels), figsize=(6.4 * len(panels) if len(panels) > 1 else 6.8, 4.8 + 0.3))
    axes = np.atleast_1d(axes)
    compressed = frame[frame["method"] != "dense"]
    keyed = styles(list(dict.fromkeys(zip(compressed["method"], compressed["healing"]))))
    multi = frame["model"].nunique() > 1
    for ax, (column, label, logy) in zip(axes, panels):
        for model, per_model in frame.groupby("model"):
            dense = per_model[per_model["method"] == "dense"]
            groups = per_model[per_model["method"] != "dense"].groupby(["method", "healing", "by_layers"])
            for (method, healing, by_layers), rows in groups:
                points = pd.concat([dense, rows]).sort_values("x")
                name = f"{method} + {healing}" + (" (layer counts)" if by_layers else "") + (f" ({model})" if multi else "")
                style = {**keyed[(method, healing)], **({"linestyle": "--"} if by_layers else {})}
                ax.errorbar(points["x"] * 100, points[column], yerr=error_bars(points, column), label=name,
                            markersize=5, capsize=2, **style)
        if logy:
            plain_log(ax)
        ax.set_xlabel(sparsity_label(frame))
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    if compressed.empty:
        say_missing(axes[0], [missing_line("compressed variants", "methods, sparsities")])
    fig.suptitle(title)
    _legend_below(fig, axes, axes[0])
    return fig


def say_missing(ax, lines: list[str]) -> None:
    """Write what is missing across an empty panel."""
    ax.text(0.5, 0.5, "\n".join(lines), ha="center", va="center", wrap=True, fontsize=9, transform=ax.transAxes)


def _tokens_label(tokens: float) -> str:
    for unit, size in (("M", 1e6), ("k", 1e3)):
        if tokens >= size:
            return f"{tokens / size:.3g}{unit}"
    return f"{tokens:g}"


def training_data_figure(rows: pd.DataFrame, method: str, title: str):
    """Average accuracy and perplexity against the training tokens of each trained healing of `method` (`rows`:
    one target, every budget); dense and plain removal as horizontal lines."""
    trained = rows[(rows["method"] == method) & (rows["healing"] != "none")]
    trained = trained[pd.to_numeric(trained["training_tokens"], errors="coerce") > 0]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    problems = []
    if trained.empty:
        problems.append(missing_line(f"trained healings of {method} at ~25%", "healing, replacements"))
    elif trained["training_scale"].nunique() < 2:
        problems.append(missing_line("more than one training budget", "training.scales: [1, 2, 4, 8, 16]"))
    keyed = styles(list(dict.fromkeys(zip(trained["method"], trained["healing"]))))
    for ax, (column, label, logy) in zip(
        axes, [("Avg", "average accuracy (%)", False), ("perplexity", "WikiText-2 perplexity (log)", True)]
    ):
        for (m, healing), line in trained.groupby(["method", "healing"]):
            line = line.sort_values("training_tokens")
            ax.errorbar(line["training_tokens"], line[column], yerr=error_bars(line, column), label=healing,
                        capsize=2, **keyed[(m, healing)])
        for ref_method, style, name in (("dense", "--", "dense model"), (method, ":", "removal only (none)")):
            ref = rows[(rows["method"] == ref_method) & (rows["healing"] == "none")]
            if not ref.empty:
                ax.axhline(ref[column].iloc[0], color="grey", linestyle=style, label=name)
        if not trained.empty:
            ax.set_xscale("log", base=2)
            ticks = sorted(set(trained["training_tokens"]))
            scale_of = trained.drop_duplicates("training_tokens").set_index("training_tokens")["training_scale"]
            ax.set_xticks(ticks, [f"{_tokens_label(t)}\n({scale_of[t]:g}x)" for t in ticks])
            ax.minorticks_off()
        if logy:
            plain_log(ax)
        ax.set_xlabel("training tokens per epoch (budget multiple)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    if problems:
        axes[0].text(0.02, 0.02, "\n".join(problems), transform=axes[0].transAxes, fontsize=8, color="darkred")
    axes[0].set_title("Accuracy vs training data")
    axes[1].set_title("Perplexity vs training data")
    if axes[0].get_legend_handles_labels()[0]:
        axes[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def healing_cost_figure(frame: pd.DataFrame, title: str):
    """Each trained healing's cost (training time, peak memory of its job, trainable parameters) against the
    average accuracy it recovers over plain removal of the same window (Avg points, with the paired interval of
    that difference), one line per (method, healing, target) through its training budgets."""
    trained = frame[(frame["healing"] != "none") & frame["train_seconds"].notna()].copy()
    gpu = trained["peak_gpu_mb"].notna().any() if "peak_gpu_mb" in trained else False
    memory = "peak_gpu_mb" if gpu else "peak_rss_mb"
    trained["memory_gb"] = trained[memory] / 1024
    trained["trainable_m"] = trained["trainable_params"] / 1e6
    removal = frame[frame["healing"] == "none"].set_index(["model", "method", "target_sparsity", "target_layers"])
    keys = pd.MultiIndex.from_frame(trained[["model", "method", "target_sparsity", "target_layers"]])
    if "Avg:removal_difference" not in trained:  # no paired.csv: the difference without its interval
        trained["Avg:removal_difference"] = trained["Avg"].to_numpy() - removal["Avg"].reindex(keys).to_numpy()
    panels = [
        ("train_seconds", "training time (s, log)", True),
        ("memory_gb", f"peak {'GPU' if gpu else 'process RSS'} memory of the healing job (GiB)", False),
        ("trainable_m", "trainable parameters (millions, log)", True),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.8), sharey=True)
    keyed = styles(list(dict.fromkeys(zip(trained["method"], trained["healing"]))))
    several = trained.groupby(["method", "target_sparsity", "target_layers"]).ngroups > 1
    for ax, (column, label, logx) in zip(axes, panels):
        for (method, healing, sparsity, layers), line in trained.groupby(
            ["method", "healing", "target_sparsity", "target_layers"]
        ):
            line = line.sort_values("training_scale")
            if line[column].notna().any():
                where = f"l{layers}" if layers else f"{sparsity:g}"
                name = f"{method} + {healing} @ {where}" if several else healing
                ax.errorbar(line[column], line["Avg:removal_difference"], yerr=error_bars(line, "Avg", "removal_"),
                            label=name, capsize=2, **keyed[(method, healing)])
        ax.axhline(0, color="grey", lw=0.8)
        if logx and trained[column].notna().any():
            plain_log(ax, "x")
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy recovered over removal only (Avg points)")
    problems = []
    if trained.empty:
        problems.append(missing_line("trained healings", "healing: [replacement, lora]"))
    elif trained["Avg:removal_difference"].isna().all():
        problems.append(missing_line("plain removal (the baseline)", "replacements: [none, ...]"))
    if "lora" not in set(trained["healing"]):
        problems.append(missing_line("LoRA", "healing: [..., lora]"))
    if problems:
        axes[1].text(0.02, 0.02, "\n".join(problems), transform=axes[1].transAxes, fontsize=8, color="darkred")
    if axes[0].get_legend_handles_labels()[0]:
        axes[0].legend(fontsize=8, title="healing (points: 1x, 2x, ... budgets)", title_fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def importance_figure(scores_csv: str | Path, plans: list[str | Path], model: str, method_first: str = "streamline"):
    """Top: per-layer cosine cos(h_i, h_i+1) (the windows of one layer). Bottom: the cosine of every window
    (x: start layer, y: window length) with each window plan's removed window marked, one colour per method."""
    table = pd.read_csv(scores_csv)
    windows: dict[str, set] = {}
    for plan in map(read_json, plans):
        if plan.get("start_layer") is not None:
            key = (int(plan["start_layer"]), int(plan["num_layers_removed"]))
            windows.setdefault(plan.get("method", "?"), set()).add(key)
    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(9, 8.5), gridspec_kw={"height_ratios": [1, 2.4]}, constrained_layout=True
    )
    single = table[table["num_layers"] == 1].sort_values("start_layer")
    top.bar(single["start_layer"], single["score"], color="tab:blue")
    low = single["score"].min()
    top.set_ylim(max(0.0, low - 0.1 * (1 - low) - 0.02), 1.0)
    top.set_xlabel("layer i")
    top.set_ylabel("cos(h_i, h_i+1)")
    top.set_title(f"{model}: per-layer cosine similarity of input and output (higher = more redundant)")
    top.set_xlim(-0.5, single["start_layer"].max() + 0.5)
    top.grid(alpha=0.3, axis="y")
    grid = table.pivot(index="num_layers", columns="start_layer", values="score")
    image = bottom.imshow(
        grid.values,
        origin="lower",
        aspect="auto",
        cmap="viridis",
        extent=(-0.5, grid.shape[1] - 0.5, grid.index.min() - 0.5, grid.index.max() + 0.5),
    )
    fig.colorbar(image, ax=bottom, label="mean cos(h_i, h_i+n)")
    colours = ["red", "black", "magenta", "white", "orange", "cyan"]  # visible on viridis's dark and bright ends
    for k, (method, marked) in enumerate(sorted(windows.items(), key=lambda e: (e[0] != method_first, e[0]))):
        for i, (start, n) in enumerate(sorted(marked)):
            bottom.add_patch(
                plt.Rectangle(
                    (start - 0.5, n - 0.5),
                    1,
                    1,
                    fill=False,
                    lw=2.4 - 0.3 * k,
                    linestyle="-" if k == 0 else (0, (3, 1.5)),
                    edgecolor=colours[k % len(colours)],
                    label=method if i == 0 else None,
                )
            )
    bottom.set_xlabel("start layer i")
    bottom.set_ylabel("window length n (layers removed)")
    bottom.set_title("cosine of every window (squares: windows the plans removed, by method)")
    if windows:
        bottom.legend(loc="upper right", fontsize=8, facecolor="lightgrey")
    else:
        bottom.text(0.5, 0.9, missing_line("window-method plans", "methods: [streamline]"), ha="center",
                    transform=bottom.transAxes, color="white")
    return fig


# ---- the experiment's plots: one rule (`plot`), one entry each -------------------------------------------------


@dataclass(frozen=True)
class Figure:
    """An experiment plot: its file stem under plots/, how it is drawn from the variant frame, its caption."""

    name: str
    draw: Callable[[pd.DataFrame], object]
    caption: str


def _one_panel(column: str, label: str, title: str, logy: bool = False) -> Callable[[pd.DataFrame], object]:
    return lambda frame: sparsity_figure(frame, [(column, label, logy)], title)


FIGURES = {
    figure.name: figure
    for figure in (
        Figure(
            "accuracy_vs_sparsity",
            _one_panel("Avg", "average zero-shot accuracy (%)", "Average accuracy vs sparsity"),
            "Average zero-shot accuracy against the target sparsity, one line per pruning method and healing kind; "
            "every line starts at the dense model (sparsity 0). Error bars: 95% paired-bootstrap intervals (tables/paired.csv).",
        ),
        Figure(
            "relative_accuracy_vs_sparsity",
            _one_panel("RA", "relative accuracy (% of dense Avg)", "Relative accuracy vs sparsity"),
            "Relative accuracy (Avg as % of the dense model's) against the target sparsity, one line per pruning "
            "method and healing kind. Error bars: 95% paired-bootstrap intervals (tables/paired.csv).",
        ),
        Figure(
            "stability_vs_sparsity",
            _one_panel("stability", "stability vs dense, mean over tasks (%)", "Stability vs sparsity"),
            "Stability against the dense model, averaged over the multiple-choice tasks, against the target sparsity. Error bars: 95% paired-bootstrap intervals (tables/paired.csv).",
        ),
        Figure(
            "perplexity_vs_sparsity",
            _one_panel("perplexity", "perplexity (log scale)", "Perplexity vs sparsity", logy=True),
            "Perplexity (log scale) against the target sparsity; fixed windows, stride = window. Error bars: 95% paired-bootstrap intervals (tables/paired.csv).",
        ),
        Figure(
            "healing_cost",
            lambda frame: healing_cost_figure(frame, "Healing cost vs accuracy recovered over plain removal"),
            "Healing cost: training time, peak memory and trainable parameters of each healing run against the "
            "average accuracy it recovers over plain removal of the same layers, with the paired 95% interval of that "
            "difference.",
        ),
    )
}
