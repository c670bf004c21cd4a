"""The paper's tables and figures (Chen et al., ICLR 2025) from one experiment's all.csv (rules/paper.smk).

Every item is one function: all.csv (and for the importance figure the importance table and the plans) in, a
Markdown + LaTeX table or a PNG + PDF figure out. All of them read one wide frame, `variant_frame`: one row per
variant (model, method, healing, target, training scale), columns = per-task accuracy, Avg, RA, mean stability,
prediction agreement, ESS, perplexity and the healing cost.

Missing rows never fail an item: the item is still written and says, in its text or on the figure, which rows
are missing and which config key adds them (`missing_line`), so `snakemake paper` works on any experiment and a
reader sees what the config left out. Accuracy is `acc_ppl` where the task reports it (the paper's OpenCompass
PPL-mode decision rule), else acc_norm, else acc.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from streamline.atomic import read_json, write_text
from streamline.reporting.plots import save
from streamline.reporting.tables import ROW_ORDER, VARIANT_KEYS, base_budget, relative_accuracy, with_targets

# The paper's setting: the main table and the ablations are at ~25% sparsity, with the paper's method.
PAPER_SPARSITY = 0.25
PAPER_METHOD = "streamline"
# Lightweight-network ablation rows, in the paper's order plus this project's none and linear.
ABLATION_KINDS = ("none", "linear", "ffn", "swiglu", "layer")
# Pruning-metric ablation: the paper's cosine window against the perplexity-chosen consecutive window.
METRIC_METHODS = ("streamline", "ppl-window")
# Accuracy metric per task, first present wins (acc_ppl: the paper's PPL-mode rule).
ACCURACY_PREFERENCE = ("acc_ppl", "acc_norm", "acc")
KEYS = [*VARIANT_KEYS, "training_scale"]
# Healing-cost metrics of all.csv (compressed.json's training record).
COST_METRICS = ("train_seconds", "train_tokens", "trainable_params", "peak_rss_mb", "peak_gpu_mb")
STABILITY_METRICS = ("stability", "prediction_agreement", "stability_ess")


def missing_line(what: str, key: str) -> str:
    """One line naming missing rows and the config key that adds them."""
    return f"missing: {what} (add it with config `{key}`)"


def _prepared(table: pd.DataFrame) -> pd.DataFrame:
    """all.csv with targets filled (tables.with_targets) and training_scale filled (1 = the base budget, also for
    variants that train nothing and for tables written before training scales existed)."""
    out = with_targets(table)
    if "training_scale" not in out:
        out["training_scale"] = 1.0
    out["training_scale"] = pd.to_numeric(out["training_scale"], errors="coerce").fillna(1.0)
    out["task"] = out["task"].fillna("")
    return out


def _first_present(rows: pd.DataFrame, order: Iterable[str]) -> pd.DataFrame:
    """Per (variant, task), the row of the first metric of `order` that the task reports."""
    rank = {metric: i for i, metric in enumerate(order)}
    picked = rows[rows["metric"].isin(rank)].assign(_rank=lambda f: f["metric"].map(rank))
    return picked.sort_values("_rank").drop_duplicates([*KEYS, "task"])


def variant_frame(table: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """One row per variant (KEYS) with every number the paper items show, and the accuracy tasks in order.

    Columns: each task's accuracy (%), Avg (mean over tasks), RA (Avg as % of the same model's dense Avg),
    stability / agreement (mean over tasks, %), ESS (mean), acc_metric (the accuracy metrics used), perplexity
    (the first perplexity row), the COST_METRICS present, training_tokens, actual_sparsity, layers_removed,
    removed_layers and x (target sparsity; the achieved one for a layer-count target).
    """
    frame = _prepared(table)
    info_cols = ["actual_sparsity", "layers_removed", "removed_layers"]
    base = frame.drop_duplicates(KEYS).set_index(KEYS)[[c for c in info_cols if c in frame]]
    out = base.copy()
    accuracy = _first_present(frame[frame["task"] != ""], ACCURACY_PREFERENCE)
    accuracy = accuracy[~accuracy["metric"].isin(["perplexity"])]
    tasks = list(dict.fromkeys(accuracy.sort_values("task")["task"]))
    if tasks:
        wide = accuracy.pivot_table(index=KEYS, columns="task", values="value", aggfunc="first") * 100
        out = out.join(wide[tasks])
        out["Avg"] = out[tasks].mean(axis=1, skipna=False)
        used = accuracy.groupby(KEYS)["metric"].agg(lambda m: "/".join(sorted(set(m))))
        out["acc_metric"] = used
        out["RA"] = relative_accuracy(out["Avg"])
    else:
        out["Avg"] = np.nan
        out["RA"] = np.nan
    for metric, scale in (("stability", 100), ("prediction_agreement", 100), ("stability_ess", 1)):
        rows = frame[frame["metric"] == metric]
        out[metric] = rows.groupby(KEYS)["value"].mean() * scale
    n = frame[frame["metric"] == "stability"].groupby(KEYS)["n_examples"].mean()
    out["stability_n"] = n
    ppl = frame[frame["metric"] == "perplexity"].drop_duplicates(KEYS).set_index(KEYS)["value"]
    out["perplexity"] = ppl
    for metric in COST_METRICS:
        rows = frame[frame["metric"] == metric]
        out[metric] = rows.drop_duplicates(KEYS).set_index(KEYS)["value"] if not rows.empty else np.nan
    if "training_tokens" in frame:
        out["training_tokens"] = frame.drop_duplicates(KEYS).set_index(KEYS)["training_tokens"]
    else:
        out["training_tokens"] = out["train_tokens"]
    out = out.reset_index()
    actual = out.get("actual_sparsity", pd.Series(0.0, index=out.index))
    out["x"] = out["target_sparsity"].where(out["target_layers"] == 0, actual)
    return out.sort_values([*ROW_ORDER, "training_scale"], ignore_index=True), tasks


def paper_target(frame: pd.DataFrame) -> float | None:
    """The configured sparsity target closest to the paper's 25% (None when the experiment has only layer counts)."""
    targets = sorted(set(frame.loc[(frame["method"] != "dense") & (frame["target_layers"] == 0), "target_sparsity"]))
    if not targets:
        return None
    return min(targets, key=lambda s: (abs(s - PAPER_SPARSITY), s))


def at_target(frame: pd.DataFrame, target: float | None, base_scale: bool = True) -> pd.DataFrame:
    """The dense rows and the compressed rows at sparsity `target` (the base training budget only if asked)."""
    keep = (frame["method"] == "dense") | ((frame["target_layers"] == 0) & (frame["target_sparsity"] == target))
    rows = frame[keep]
    return base_budget(rows) if base_scale else rows


# ---- tables ---------------------------------------------------------------------------------------------------

# column -> (header, digits); ppl and cost columns: lower is better.
COLUMN_FORMAT = {
    "Avg": ("Avg", 1),
    "RA": ("RA (%)", 1),
    "stability": ("stability (%)", 1),
    "prediction_agreement": ("agreement (%)", 1),
    "stability_ess": ("ESS", 0),
    "stability_n": ("n", 0),
    "perplexity": ("PPL", 1),
    "actual_sparsity": ("sparsity", 3),
    "layers_removed": ("removed", 0),
    "removed_layers": ("layers", None),
    "train_seconds": ("train s", 0),
    "trainable_params": ("trainable", 0),
}
LOWER_BETTER = {"perplexity"}
LABELS = ["model", "method", "healing", "target"]


def _cell(value, digits: int | None) -> str:
    if isinstance(value, str):
        return value
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if digits is None:
        return str(value)
    return f"{value:,.{digits}f}" if digits == 0 else f"{value:.{digits}f}"


def _rows(frame: pd.DataFrame, columns: list[str], bold: tuple[str, str]) -> tuple[list[str], list[list[str]]]:
    """Header and cells; per model, the best compressed value of each score column in bold."""
    headers = LABELS + [COLUMN_FORMAT.get(c, (c, 1))[0] for c in columns]
    best = {}
    compressed = frame[frame["method"] != "dense"]
    for c in columns:
        if c in ("actual_sparsity", "layers_removed", "removed_layers", "stability_n", "stability_ess"):
            continue
        values = pd.to_numeric(compressed[c], errors="coerce")
        pick = values.groupby(compressed["model"]).transform("min" if c in LOWER_BETTER else "max")
        best[c] = set(compressed.index[values.eq(pick) & values.notna()])
    cells = []
    for i, row in frame.iterrows():
        target = "" if row["method"] == "dense" else _target_label(row)
        line = [str(row["model"]), str(row["method"]), str(row["healing"]), target]
        for c in columns:
            text = _cell(row[c], COLUMN_FORMAT.get(c, (c, 1))[1])
            line.append(f"{bold[0]}{text}{bold[1]}" if text and i in best.get(c, ()) else text)
        cells.append(line)
    return headers, cells


def _target_label(row: pd.Series) -> str:
    label = f"l{int(row['target_layers'])}" if row["target_layers"] else f"{row['target_sparsity']:g}"
    scale = row.get("training_scale", 1)
    return label if scale == 1 else f"{label} ({scale:g}x tokens)"


def render_markdown(frame: pd.DataFrame, columns: list[str], title: str, notes: list[str]) -> str:
    """`frame`'s rows as a Markdown table under `title`; `notes` (what it shows, what is missing) below it."""
    lines = [f"# {title}", ""]
    if frame.empty:
        lines.append("(no rows)")
    else:
        headers, cells = _rows(frame, columns, ("**", "**"))
        lines += ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        lines += ["| " + " | ".join(row) + " |" for row in cells]
    lines += [""] + [f"- {note}" for note in notes]
    return "\n".join(lines) + "\n"


def render_latex(frame: pd.DataFrame, columns: list[str], notes: list[str]) -> str:
    """The same table as a booktabs tabular; notes as LaTeX comments."""
    escape = lambda text: text.replace("\\", r"\textbackslash{}").replace("_", r"\_").replace("%", r"\%")
    lines = [f"% {note}" for note in notes]
    if frame.empty:
        return "\n".join(lines + ["% (no rows)"]) + "\n"
    headers, cells = _rows(frame, columns, ("BOLDSTART", "BOLDEND"))
    lines += [
        r"\begin{tabular}{" + "l" * len(LABELS) + "r" * len(columns) + "}",
        r"\toprule",
        " & ".join(escape(h) for h in headers) + r" \\",
        r"\midrule",
    ]
    for row in cells:
        text = " & ".join(escape(c).replace("BOLDSTART", r"\textbf{").replace("BOLDEND", "}") for c in row)
        lines.append(text + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def _write_table(
    frame: pd.DataFrame, columns: list[str], title: str, notes: list[str], md: str | Path, tex: str | Path
) -> None:
    write_text(md, render_markdown(frame, columns, title, notes))
    write_text(tex, render_latex(frame, columns, notes))


def _accuracy_note(frame: pd.DataFrame, tasks: list[str]) -> str:
    used = sorted(set("/".join(frame.get("acc_metric", pd.Series(dtype=str)).dropna()).split("/")) - {""})
    return f"accuracy (%) per task: {', '.join(used) or 'none'} (acc_ppl = the paper's PPL-mode rule); tasks: " + (
        ", ".join(tasks) or "none"
    )


def _target_notes(frame: pd.DataFrame, target: float | None) -> list[str]:
    if target is None:
        return [missing_line("a sparsity target (only layer counts or nothing compressed)", "sparsities: [0.25]")]
    notes = [f"compressed rows at target sparsity {target:g} (the configured target closest to the paper's 0.25)"]
    if target != PAPER_SPARSITY:
        notes.append(missing_line("sparsity 0.25 itself", "sparsities"))
    return notes


def main_table(all_csv: str | Path, md: str | Path, tex: str | Path) -> pd.DataFrame:
    """The paper's main table: every method x healing at ~25% sparsity, accuracy per task, Avg, RA, mean
    stability and WikiText-2 perplexity (base training budget)."""
    frame, tasks = variant_frame(pd.read_csv(all_csv))
    target = paper_target(frame)
    rows = at_target(frame, target)
    columns = [*tasks, "Avg", "RA", "stability", "perplexity"]
    notes = _target_notes(frame, target) + [_accuracy_note(rows, tasks)]
    notes.append("RA = Avg as % of the dense Avg; stability = mean over tasks (%); PPL = WikiText-2 perplexity")
    notes.append("bold: best compressed value per model (PPL: lowest)")
    title = "Main table: methods x healing at ~25% sparsity"
    _write_table(rows, columns, title, notes, md, tex)
    return rows


def lightweight_ablation(all_csv: str | Path, md: str | Path, tex: str | Path) -> pd.DataFrame:
    """The paper's lightweight-network ablation: the paper's method at ~25% with each replacement kind."""
    frame, tasks = variant_frame(pd.read_csv(all_csv))
    target = paper_target(frame)
    rows = at_target(frame, target)
    dense = rows[rows["method"] == "dense"]
    ours = rows[(rows["method"] == PAPER_METHOD) & rows["healing"].isin(ABLATION_KINDS)]
    ours = ours.assign(_order=ours["healing"].map({k: i for i, k in enumerate(ABLATION_KINDS)}))
    ours = ours.sort_values(["model", "_order"]).drop(columns="_order")
    notes = _target_notes(frame, target)
    absent = [k for k in ABLATION_KINDS if k not in set(ours["healing"])]
    if absent:
        notes.append(
            missing_line(
                f"{PAPER_METHOD} with {', '.join(absent)}",
                f"methods: [{PAPER_METHOD}, ...], healing: [none, replacement], replacements: [{', '.join(ABLATION_KINDS)}]",
            )
        )
    notes.append(_accuracy_note(ours, tasks))
    notes.append(
        "removed = layers removed (a replacement takes their place); sparsity = achieved, replacement counted back"
    )
    columns = ["layers_removed", "actual_sparsity", *tasks, "Avg", "RA", "perplexity"]
    title = f"Lightweight-network ablation ({PAPER_METHOD}): none / linear / ffn / swiglu / layer"
    out = pd.concat([dense, ours])
    _write_table(out, columns, title, notes, md, tex)
    return out


def stability_table(all_csv: str | Path, md: str | Path, tex: str | Path) -> pd.DataFrame:
    """Stability against the dense model for every variant at ~25%: accuracy, stability, prediction agreement,
    effective sample size of the stability weights, mean over tasks."""
    frame, tasks = variant_frame(pd.read_csv(all_csv))
    target = paper_target(frame)
    rows = at_target(frame, target)
    rows = rows[rows["method"] != "dense"]
    notes = _target_notes(frame, target)
    if rows["stability"].isna().all():
        notes.append(missing_line("stability rows (multiple-choice tasks)", "evaluation.tasks"))
    notes.append(_accuracy_note(rows, tasks))
    notes.append(
        "stability: softmax(dense per-choice PPL-score std)-weighted share of examples both models get right or "
        "both wrong (%); agreement: same predicted choice (%); ESS = 1 / sum w^2 of n examples; means over tasks"
    )
    columns = ["Avg", "stability", "prediction_agreement", "stability_ess", "stability_n"]
    _write_table(rows, columns, "Stability of the compressed models against the dense model", notes, md, tex)
    return rows


def pruning_metric(all_csv: str | Path, md: str | Path, tex: str | Path) -> pd.DataFrame:
    """The paper's pruning-metric ablation: the cosine-chosen window (streamline) against the window whose removal
    gives the lowest calibration perplexity (ppl-window), with every healing both have, at ~25%."""
    frame, tasks = variant_frame(pd.read_csv(all_csv))
    target = paper_target(frame)
    rows = at_target(frame, target)
    dense = rows[rows["method"] == "dense"]
    ours = rows[rows["method"].isin(METRIC_METHODS)].sort_values(["model", "healing", "method"])
    notes = _target_notes(frame, target)
    absent = [m for m in METRIC_METHODS if m not in set(ours["method"])]
    if absent:
        notes.append(missing_line(f"method {', '.join(absent)}", f"methods: [{', '.join(METRIC_METHODS)}]"))
    notes.append(_accuracy_note(ours, tasks))
    notes.append("streamline: highest mean cosine(h_i, h_i+n); ppl-window: lowest calibration NLL without the window")
    columns = ["removed_layers", *tasks, "Avg", "RA", "perplexity"]
    out = pd.concat([dense, ours])
    _write_table(out, columns, "Pruning metric: cosine-chosen vs perplexity-chosen window", notes, md, tex)
    return out


# ---- figures ----------------------------------------------------------------------------------------------------


def _say_missing(ax, lines: list[str]) -> None:
    """Write what is missing across an empty panel."""
    ax.text(0.5, 0.5, "\n".join(lines), ha="center", va="center", wrap=True, fontsize=9, transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def _styles(keys: list[tuple[str, str]]) -> dict[tuple[str, str], dict]:
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


def _plain_log(ax, axis: str = "y") -> None:
    """A log axis labelled with plain numbers (30, 100, 300) instead of 3 x 10^1."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    target = ax.yaxis if axis == "y" else ax.xaxis
    (ax.set_yscale if axis == "y" else ax.set_xscale)("log")
    target.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    target.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.10g}"))
    target.set_minor_formatter(NullFormatter())


def _sparsity_label(table: pd.DataFrame) -> str:
    """The x label: what the sparsity is a fraction of (all.csv's sparsity_of)."""
    of = set(table.get("sparsity_of", pd.Series(dtype=str)).dropna()) - {""}
    what = {"layers": "decoder-layer parameters", "all": "all parameters"}
    return f"sparsity (% of {' / '.join(what.get(o, o) for o in sorted(of)) or 'parameters'} removed)"


def sparsity_curves(all_csv: str | Path, png: str | Path, pdf: str | Path, dpi: int = 150) -> None:
    """Average accuracy, RA and perplexity against sparsity, one line per (method, healing); every line starts at
    the dense model (sparsity 0). Layer-count targets sit at their achieved sparsity."""
    table = pd.read_csv(all_csv)
    frame, _ = variant_frame(table)
    frame = base_budget(frame)
    panels = [
        ("Avg", "average accuracy (%)", False),
        ("RA", "relative accuracy RA (% of dense)", False),
        ("perplexity", "WikiText-2 perplexity (log)", True),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.8))
    compressed = frame[frame["method"] != "dense"]
    keys = list(dict.fromkeys(zip(compressed["method"], compressed["healing"])))
    styles = _styles(keys)
    multi = frame["model"].nunique() > 1
    for ax, (column, label, logy) in zip(axes, panels):
        for model, per_model in frame.groupby("model"):
            dense = per_model[per_model["method"] == "dense"]
            for (method, healing), rows in per_model[per_model["method"] != "dense"].groupby(["method", "healing"]):
                points = pd.concat([dense, rows]).sort_values("x")
                name = f"{method} + {healing}" + (f" ({model})" if multi else "")
                ax.plot(points["x"] * 100, points[column], label=name, markersize=5, **styles[(method, healing)])
        if logy:
            _plain_log(ax)
        ax.set_xlabel(_sparsity_label(table))
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    if compressed.empty:
        _say_missing(axes[1], [missing_line("compressed variants", "methods, sparsities")])
    axes[0].set_title("Average accuracy")
    axes[1].set_title("Relative accuracy")
    axes[2].set_title("Perplexity")
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(6, len(labels)), fontsize=8, frameon=False)
    fig.suptitle("Accuracy, RA and perplexity vs sparsity (sparsity 0 = dense)")
    rows_of_legend = math.ceil(len(labels) / 6) if handles else 0
    fig.tight_layout(rect=(0, 0.06 + 0.035 * rows_of_legend, 1, 1))
    _save(fig, png, pdf, dpi)


def _save(fig, png: str | Path, pdf: str | Path, dpi: int) -> None:
    """plots.save without its tight_layout (the caller laid out room for a figure legend)."""
    fig.tight_layout = lambda *a, **k: None  # the layout is final
    save(fig, png, pdf, dpi)


def _tokens_label(tokens: float) -> str:
    for unit, size in (("M", 1e6), ("k", 1e3)):
        if tokens >= size:
            return f"{tokens / size:.3g}{unit}"
    return f"{tokens:g}"


def training_data_size(all_csv: str | Path, png: str | Path, pdf: str | Path, dpi: int = 150) -> None:
    """Average accuracy and perplexity against the training tokens of each trained healing of the paper's method at
    ~25% (replacement kinds and LoRA at the same budgets); dense and plain removal as horizontal lines."""
    frame, _ = variant_frame(pd.read_csv(all_csv))
    target = paper_target(frame)
    rows = at_target(frame, target, base_scale=False)
    trained = rows[(rows["method"] == PAPER_METHOD) & rows["training_tokens"].notna() & (rows["healing"] != "none")]
    trained = trained[pd.to_numeric(trained["training_tokens"], errors="coerce") > 0]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    problems = []
    if trained.empty:
        problems.append(missing_line(f"trained healings of {PAPER_METHOD} at ~25%", "healing, replacements"))
    elif trained["training_scale"].nunique() < 2:
        problems.append(missing_line("more than one training budget", "training.scales: [1, 2, 4, 8, 16]"))
    keys = list(dict.fromkeys(zip(trained["method"], trained["healing"])))
    styles = _styles(keys)
    for ax, (column, label, logy) in zip(
        axes, [("Avg", "average accuracy (%)", False), ("perplexity", "WikiText-2 perplexity (log)", True)]
    ):
        for (method, healing), line in trained.groupby(["method", "healing"]):
            line = line.sort_values("training_tokens")
            ax.plot(line["training_tokens"], line[column], label=f"{healing}", **styles[(method, healing)])
        for method, style, name in (("dense", "--", "dense model"), (PAPER_METHOD, ":", "removal only (none)")):
            ref = rows[(rows["method"] == method) & (rows["healing"] == "none")]
            if not ref.empty:
                ax.axhline(ref[column].iloc[0], color="grey", linestyle=style, label=name)
        if not trained.empty:
            ax.set_xscale("log", base=2)
            ticks = sorted(set(trained["training_tokens"]))
            scale_of = trained.drop_duplicates("training_tokens").set_index("training_tokens")["training_scale"]
            ax.set_xticks(ticks, [f"{_tokens_label(t)}\n({scale_of[t]:g}x)" for t in ticks])
            ax.minorticks_off()
        if logy:
            _plain_log(ax)
        ax.set_xlabel("training tokens per epoch (budget multiple)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    if problems:
        axes[0].text(0.02, 0.02, "\n".join(problems), transform=axes[0].transAxes, fontsize=8, color="darkred")
    axes[0].set_title("Accuracy vs training data")
    axes[1].set_title("Perplexity vs training data")
    handles, _ = axes[0].get_legend_handles_labels()
    if handles:
        axes[0].legend(fontsize=8)
    where = f"{target:g}" if target is not None else "?"
    fig.suptitle(f"Training-data size: {PAPER_METHOD} at sparsity {where}, replacement and LoRA at the same budgets")
    save(fig, png, pdf, dpi)


def healing_cost(all_csv: str | Path, png: str | Path, pdf: str | Path, dpi: int = 150) -> None:
    """Replacement vs LoRA: training time, peak memory and trainable parameters against the average accuracy each
    recovers over plain removal (same method and target), every training budget as a point on its line."""
    frame, _ = variant_frame(pd.read_csv(all_csv))
    target = paper_target(frame)
    rows = at_target(frame, target, base_scale=False)
    rows = rows[rows["method"] == PAPER_METHOD]
    removal = rows.loc[rows["healing"] == "none", "Avg"]
    trained = rows[(rows["healing"] != "none") & rows["train_seconds"].notna()].copy()
    trained["recovered"] = trained["Avg"] - (removal.iloc[0] if not removal.empty else np.nan)
    gpu = trained["peak_gpu_mb"].notna().any() if "peak_gpu_mb" in trained else False
    memory = "peak_gpu_mb" if gpu else "peak_rss_mb"
    trained["memory_gb"] = trained[memory] / 1024
    trained["trainable_m"] = trained["trainable_params"] / 1e6
    panels = [
        ("train_seconds", "training time (s, log)", True),
        ("memory_gb", f"peak {'GPU' if gpu else 'process RSS'} memory of the healing job (GiB)", False),
        ("trainable_m", "trainable parameters (millions, log)", True),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.8), sharey=True)
    keys = list(dict.fromkeys(zip(trained["method"], trained["healing"])))
    styles = _styles(keys)
    for ax, (column, label, logx) in zip(axes, panels):
        for (method, healing), line in trained.groupby(["method", "healing"]):
            line = line.sort_values("training_scale")
            if line[column].notna().any():
                ax.plot(line[column], line["recovered"], label=healing, **styles[(method, healing)])
        ax.axhline(0, color="grey", lw=0.8)
        if logx and trained[column].notna().any():
            _plain_log(ax, "x")
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy recovered over removal only (Avg points)")
    problems = []
    if trained.empty:
        problems.append(missing_line(f"trained healings of {PAPER_METHOD} at ~25%", "healing: [replacement, lora]"))
    elif removal.empty:
        problems.append(missing_line(f"{PAPER_METHOD} + none (the baseline)", "replacements: [none, ...]"))
    if "lora" not in set(trained["healing"]):
        problems.append(missing_line("LoRA", "healing: [..., lora]"))
    if trained["trainable_params"].isna().all() and not trained.empty:
        problems.append("missing: trainable_params / peak memory rows (all.csv written before they were reported)")
    if problems:
        axes[1].text(0.02, 0.02, "\n".join(problems), transform=axes[1].transAxes, fontsize=8, color="darkred")
    handles, _ = axes[0].get_legend_handles_labels()
    if handles:
        axes[0].legend(fontsize=8, title="healing (points: 1x, 2x, ... budgets)", title_fontsize=8)
    where = f"{target:g}" if target is not None else "?"
    fig.suptitle(f"Healing cost vs accuracy recovered: {PAPER_METHOD} at sparsity {where}")
    save(fig, png, pdf, dpi)


def importance_figure(
    scores_csv: str | Path, plans: list[str | Path], png: str | Path, pdf: str | Path, model: str, dpi: int = 150
) -> None:
    """Top: per-layer cosine cos(h_i, h_i+1) (the windows of one layer). Bottom: the cosine of every window
    (x: start layer, y: window length) with each window plan's removed window marked, one colour per method."""
    table = pd.read_csv(scores_csv)
    windows = {}
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
    for k, (method, marked) in enumerate(sorted(windows.items(), key=lambda e: (e[0] != PAPER_METHOD, e[0]))):
        for i, (start, n) in enumerate(sorted(marked)):
            rect = plt.Rectangle(
                (start - 0.5, n - 0.5),
                1,
                1,
                fill=False,
                lw=2.4 - 0.3 * k,
                linestyle="-" if k == 0 else (0, (3, 1.5)),
                edgecolor=colours[k % len(colours)],
                label=method if i == 0 else None,
            )
            bottom.add_patch(rect)
    bottom.set_xlabel("start layer i")
    bottom.set_ylabel("window length n (layers removed)")
    bottom.set_title("cosine of every window (squares: windows the plans removed, by method)")
    if windows:
        bottom.legend(loc="upper right", fontsize=8, facecolor="lightgrey")
    else:
        bottom.text(
            0.5,
            0.9,
            missing_line("window-method plans", "methods: [streamline]"),
            ha="center",
            transform=bottom.transAxes,
            color="white",
        )
    fig.tight_layout = lambda *a, **k: None  # constrained layout
    save(fig, png, pdf, dpi)
