"""The paper's tables and figures (Chen et al., ICLR 2025) as data: ITEMS maps each item's name to its kind, the
function that builds it and its caption (rules/paper.smk makes one job per item from this registry; the report's
"Paper" category lists them). Adding an item = one `PaperItem` entry and its function, here.

Tables and figures are built from the experiment's variant frame (frame.py: all.csv + paired.csv, so every value
carries the same interval and marks as the experiment's own tables) and rendered by render.py / plots.py; the
importance figure from the importance table and the plans. Missing rows never fail an item: it is still written
and says, in its notes or on the figure, which rows are missing and which config key adds them (`missing_line`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from streamline.atomic import write_text
from streamline.reporting import render
from streamline.reporting.frame import at_target, paper_target, read_frame
from streamline.reporting.plots import (
    healing_cost_figure,
    importance_figure,
    missing_line,
    save,
    sparsity_figure,
    training_data_figure,
)
from streamline.reporting.render import Column
from streamline.reporting.tables import accuracy_note

# The paper's setting: the main table and the ablations are at ~25% sparsity, with the paper's method.
PAPER_SPARSITY = 0.25
PAPER_METHOD = "streamline"
# Lightweight-network ablation rows, in the paper's order plus this project's none and linear.
ABLATION_KINDS = ("none", "linear", "ffn", "swiglu", "layer")
# Pruning-metric ablation: the paper's cosine window against the perplexity-chosen consecutive window.
METRIC_METHODS = ("streamline", "ppl-window")

Table = tuple[pd.DataFrame, list[Column], str, list[str]]  # rows, columns, title, notes


def _task_columns(tasks: list[str]) -> list[Column]:
    return [Column(task, task) for task in tasks]


def _target_notes(frame: pd.DataFrame, target: float | None) -> list[str]:
    if target is None:
        return [missing_line("a sparsity target (only layer counts or nothing compressed)", "sparsities: [0.25]")]
    notes = [f"compressed rows at target sparsity {target:g} (the configured target closest to the paper's 0.25)"]
    if target != PAPER_SPARSITY:
        notes.append(missing_line("sparsity 0.25 itself", "sparsities"))
    return notes


def main_table(frame: pd.DataFrame, tasks: list[str]) -> Table:
    """Every method x healing at ~25% sparsity: accuracy per task, Avg, RA, mean stability, perplexity."""
    target = paper_target(frame, PAPER_SPARSITY)
    rows = at_target(frame, target)
    notes = _target_notes(frame, target) + [accuracy_note(rows, tasks)]
    notes.append("RA = Avg as % of the dense Avg; stability = mean over tasks (%); PPL = WikiText-2 perplexity")
    columns = [*_task_columns(tasks), Column("Avg", "Avg"), Column("RA", "RA (%)"), Column("stability", "stability (%)"),
               Column("perplexity", "PPL")]
    return rows, columns, "Main table: methods x healing at ~25% sparsity", notes


def lightweight_ablation(frame: pd.DataFrame, tasks: list[str]) -> Table:
    """The paper's method at ~25% with each replacement kind, in the paper's order."""
    target = paper_target(frame, PAPER_SPARSITY)
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
    notes.append(accuracy_note(ours, tasks))
    notes.append("removed = layers removed (a replacement takes their place); sparsity = achieved, replacement counted back")
    columns = [Column("layers_removed", "removed", 0), Column("actual_sparsity", "sparsity", 3), *_task_columns(tasks),
               Column("Avg", "Avg"), Column("RA", "RA (%)"), Column("perplexity", "PPL")]
    title = f"Lightweight-network ablation ({PAPER_METHOD}): none / linear / ffn / swiglu / layer"
    return pd.concat([dense, ours]), columns, title, notes


def stability_table(frame: pd.DataFrame, tasks: list[str]) -> Table:
    """Stability against the dense model for every variant at ~25%, means over tasks."""
    target = paper_target(frame, PAPER_SPARSITY)
    rows = at_target(frame, target)
    rows = rows[rows["method"] != "dense"]
    notes = _target_notes(frame, target)
    if rows["stability"].isna().all():
        notes.append(missing_line("stability rows (multiple-choice tasks)", "evaluation.tasks"))
    notes.append(accuracy_note(rows, tasks))
    notes.append(
        "stability: softmax(dense per-choice PPL-score std)-weighted share of examples both models get right or "
        "both wrong (%); agreement: same predicted choice (%); ESS = 1 / sum w^2 of n examples; choice KL: mean KL "
        "from the dense model's choice distribution; means over tasks"
    )
    columns = [Column("Avg", "Avg"), Column("stability", "stability (%)"), Column("prediction_agreement", "agreement (%)"),
               Column("stability_ess", "ESS", 0), Column("stability_n", "n", 0), Column("choice_kl", "choice KL", 3)]
    return rows, columns, "Stability of the compressed models against the dense model", notes


def pruning_metric(frame: pd.DataFrame, tasks: list[str]) -> Table:
    """The cosine-chosen window (streamline) against the lowest-calibration-perplexity window (ppl-window), with
    every healing both have, at ~25%."""
    target = paper_target(frame, PAPER_SPARSITY)
    rows = at_target(frame, target)
    dense = rows[rows["method"] == "dense"]
    ours = rows[rows["method"].isin(METRIC_METHODS)].sort_values(["model", "healing", "method"])
    notes = _target_notes(frame, target)
    absent = [m for m in METRIC_METHODS if m not in set(ours["method"])]
    if absent:
        notes.append(missing_line(f"method {', '.join(absent)}", f"methods: [{', '.join(METRIC_METHODS)}]"))
    notes.append(accuracy_note(ours, tasks))
    notes.append("streamline: highest mean cosine(h_i, h_i+n); ppl-window: lowest calibration NLL without the window")
    columns = [Column("removed_layers", "layers", None), *_task_columns(tasks), Column("Avg", "Avg"),
               Column("RA", "RA (%)"), Column("perplexity", "PPL")]
    return pd.concat([dense, ours]), columns, "Pruning metric: cosine-chosen vs perplexity-chosen window", notes


def sparsity_curves(frame: pd.DataFrame, tasks: list[str]):
    panels = [
        ("Avg", "average accuracy (%)", False),
        ("RA", "relative accuracy RA (% of dense)", False),
        ("perplexity", "WikiText-2 perplexity (log)", True),
    ]
    return sparsity_figure(frame, panels, "Accuracy, RA and perplexity vs sparsity (sparsity 0 = dense)")


def training_data_size(frame: pd.DataFrame, tasks: list[str]):
    target = paper_target(frame, PAPER_SPARSITY)
    where = f"{target:g}" if target is not None else "?"
    title = f"Training-data size: {PAPER_METHOD} at sparsity {where}, replacement and LoRA at the same budgets"
    return training_data_figure(at_target(frame, target, base_scale=False), PAPER_METHOD, title)


def healing_cost(frame: pd.DataFrame, tasks: list[str]):
    target = paper_target(frame, PAPER_SPARSITY)
    rows = at_target(frame, target, base_scale=False)
    where = f"{target:g}" if target is not None else "?"
    return healing_cost_figure(rows[rows["method"] == PAPER_METHOD], f"Healing cost vs accuracy recovered: "
                               f"{PAPER_METHOD} at sparsity {where}")


KINDS = ("table", "figure", "model_figure")  # from the variant frame | from the frame | per model, from importance


@dataclass(frozen=True)
class PaperItem:
    """One paper item: `kind` (KINDS), `build` (frame, tasks -> Table or figure; a model_figure: scores csv, plans,
    model -> figure) and its `caption` (the report's; the shared part is report/paper_item.rst)."""

    name: str
    kind: str
    build: Callable
    caption: str


ITEMS = {
    item.name: item
    for item in (
        PaperItem(
            "main_table",
            "table",
            main_table,
            "Main table: the dense model and every pruning method x healing at the configured sparsity closest to "
            "25% (the paper's main setting), base training budget. Columns: accuracy (%) per task, Avg (mean over "
            "tasks), RA (Avg as % of the dense Avg), stability (%, mean over the multiple-choice tasks) and "
            "WikiText-2 perplexity (PPL).",
        ),
        PaperItem(
            "lightweight_ablation",
            "table",
            lightweight_ablation,
            "Lightweight-network ablation: the paper's method (streamline, highest-cosine window) at the configured "
            "sparsity closest to 25% with each lightweight network in the window: none (plain removal), linear (x + "
            "Wx, this project's), ffn (the paper's FFN, fc2(ReLU(fc1 x))), swiglu (the model's MLP block) and layer "
            "(one decoder layer copied from the window's first layer). Removed = layers removed; sparsity = "
            "achieved, the network's parameters counted back. The paper trains each network with MSE on SlimPajama "
            "hidden states; here the same loss on this run's text.",
        ),
        PaperItem(
            "stability_table",
            "table",
            stability_table,
            "Stability of every compressed variant against the dense model at the configured sparsity closest to "
            "25%, means over the multiple-choice tasks: average accuracy, stability (the share of examples both "
            "models get right or both wrong, each weighted by softmax over examples of the dense model's per-choice "
            "PPL-score std; the paper's calculate_stability.py), prediction agreement, ESS (1 / sum w^2), n and the "
            "mean KL divergence of the choice distributions. The paper computes stability from OpenCompass "
            "predictions; here from lm-eval's per-example log-likelihoods.",
        ),
        PaperItem(
            "pruning_metric",
            "table",
            pruning_metric,
            "Pruning-metric ablation: the window chosen by the paper's cosine similarity (streamline) against the "
            "window chosen by perplexity (ppl-window: each window of the same length removed in turn, the lowest "
            "calibration NLL kept), with every healing both have, at the configured sparsity closest to 25%. Layers "
            "= the removed layer indices.",
        ),
        PaperItem(
            "sparsity_curves",
            "figure",
            sparsity_curves,
            "Average accuracy, relative accuracy (RA) and WikiText-2 perplexity (log scale) against sparsity for "
            "every pruning method (colour) and healing (line style and marker), base training budget; every line "
            "starts at the dense model. Layer-count targets sit at their achieved sparsity; error bars: 95% "
            "intervals.",
        ),
        PaperItem(
            "training_data_size",
            "figure",
            training_data_size,
            "Training-data size: average accuracy and WikiText-2 perplexity of the paper's method at the configured "
            "sparsity closest to 25% when its healing is trained on 1x, 2x, ... the base number of training tokens "
            "(training.scales), each replacement kind and LoRA at the same budgets. Grey lines: the dense model "
            "(dashed) and plain removal (dotted).",
        ),
        PaperItem(
            "healing_cost",
            "figure",
            healing_cost,
            "Replacement vs LoRA cost: for the paper's method at the configured sparsity closest to 25%, the "
            "average accuracy each healing recovers over plain removal of the same layers (with the paired 95% "
            "interval of that difference) against its training time, the peak memory of its job and its trainable "
            "parameters; one point per training budget. The paper compares time and GPU memory on GPUs.",
        ),
        PaperItem(
            "importance",
            "model_figure",
            importance_figure,
            "Layer importance. Top: per-layer cosine similarity of each layer's input and output hidden states "
            "(higher = more redundant). Bottom: the mean cosine of every window of n consecutive layers (x: first "
            "layer, y: n) with the windows this experiment's plans removed marked, one colour per window method.",
        ),
    )
}


def names(kind: str) -> list[str]:
    """The items of one kind, in registry order."""
    return [name for name, item in ITEMS.items() if item.kind == kind]


def get(name: str) -> PaperItem:
    if name not in ITEMS:
        raise ValueError(f"paper item {name!r} is unknown; allowed: {', '.join(ITEMS)}")
    return ITEMS[name]


def write_item(
    name: str,
    outputs: list[str | Path],
    *,
    all_csv: str | Path | None = None,
    paired_csv: str | Path | None = None,
    scores_csv: str | Path | None = None,
    plans: list[str | Path] = (),
    model: str = "",
    dpi: int,
):
    """Build item `name` into its two `outputs` (.md + .tex, or .png + .pdf) and return its rows or None."""
    item = get(name)
    if item.kind == "model_figure":
        save(item.build(scores_csv, list(plans), model), *outputs, dpi=dpi)
        return None
    frame, tasks = read_frame(all_csv, paired_csv)
    if item.kind == "figure":
        save(item.build(frame, tasks), *outputs, dpi=dpi)
        return None
    rows, columns, title, notes = item.build(frame, tasks)
    notes = [*notes, render.interval_note(rows)]
    write_text(outputs[0], render.markdown(rows, columns, title, notes))
    write_text(outputs[1], render.latex(rows, columns, notes))
    return rows

