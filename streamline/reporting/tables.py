"""Paper-shaped tables from all.csv: main accuracy table (Markdown + LaTeX) and the stability table."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from streamline.atomic import write_text

VARIANT_KEYS = ["model", "method", "healing", "target_sparsity", "target_layers"]
# Row order: per model the dense row, the sparsity targets ascending, then the layer-count targets ascending, and
# within one target every method and healing, so variants at matched sparsity or layer count sit together.
ROW_ORDER = ["model", "target_layers", "target_sparsity", "method", "healing"]


def with_targets(table: pd.DataFrame) -> pd.DataFrame:
    """all.csv with both target columns filled, so every variant groups and sorts by its target: a sparsity
    target gets target_layers 0, a layer-count target (l{n}) target_sparsity 0; the dense model has both 0."""
    out = table.copy()
    if "target_layers" not in out:
        out["target_layers"] = 0
    out["target_layers"] = out["target_layers"].fillna(0).astype(int)
    out["target_sparsity"] = out["target_sparsity"].fillna(0.0)
    return out


def base_budget(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows of each variant's smallest training budget (`training_scale`; empty = nothing trained, the base),
    so a table of one row per variant is not split or averaged across the `training.scales` budgets."""
    if "training_scale" not in frame:
        return frame
    scale = pd.to_numeric(frame["training_scale"], errors="coerce").fillna(1.0)
    smallest = scale.groupby([frame[key] for key in VARIANT_KEYS], dropna=False).transform("min")
    return frame[scale == smallest]


def target_label(target_sparsity: float, target_layers: int) -> str:
    """The target as the tables print it: 'l8' for 8 removed layers, else the sparsity ('0.25', '0' for dense)."""
    return f"l{int(target_layers)}" if target_layers else f"{target_sparsity:g}"


def task_accuracy(table: pd.DataFrame) -> pd.DataFrame:
    """One accuracy per (variant, task): acc_norm where the task reports it, else acc (the usual harness pick)."""
    acc = base_budget(with_targets(table[table["metric"].isin(["acc", "acc_norm"])]))
    preferred = acc.sort_values("metric", ascending=False)  # acc_norm sorts before acc
    return preferred.drop_duplicates(VARIANT_KEYS + ["task"])[VARIANT_KEYS + ["task", "metric", "value"]]


def relative_accuracy(avg: pd.Series) -> list[float]:
    """RA: each Avg as % of the same model's dense Avg; `avg` is indexed by levels that include model and method."""
    dense = avg[avg.index.get_level_values("method") == "dense"].groupby(level="model").first()
    return list(100 * avg.to_numpy() / dense.reindex(avg.index.get_level_values("model")).to_numpy())


def main_table(table: pd.DataFrame) -> pd.DataFrame:
    """Rows = variants, columns = tasks (accuracy, %), Avg, and RA = Avg as % of the dense model's Avg."""
    acc = task_accuracy(table)
    wide = acc.pivot_table(index=VARIANT_KEYS, columns="task", values="value").mul(100)
    wide["Avg"] = wide.mean(axis=1)
    wide["RA"] = relative_accuracy(wide["Avg"])
    return wide.reset_index().sort_values(ROW_ORDER, ignore_index=True)


# stability table columns: all.csv metric -> (header, scale); stability and agreement against the dense model
STABILITY_COLUMNS = {
    "stability": ("stability (%)", 100.0),
    "prediction_agreement": ("agreement (%)", 100.0),
    "stability_ess": ("ESS", 1.0),
    "n_examples": ("n", 1.0),
    "acc_ppl": ("acc_ppl (%)", 100.0),
}


def stability_table(table: pd.DataFrame) -> pd.DataFrame:
    """Rows = (compressed variant, task with a stability), columns = stability, prediction agreement, the
    weights' effective sample size, the examples compared and the variant's acc_ppl accuracy."""
    compressed = base_budget(with_targets(table[table["method"] != "dense"]))
    stab = compressed[compressed["metric"] == "stability"]
    rows = compressed[compressed["metric"].isin(STABILITY_COLUMNS) & compressed["task"].isin(set(stab["task"]))]
    wide = rows.pivot_table(index=VARIANT_KEYS + ["task"], columns="metric", values="value", aggfunc="first")
    wide["n_examples"] = stab.set_index(VARIANT_KEYS + ["task"])["n_examples"]
    wide = wide.reindex(columns=list(STABILITY_COLUMNS))
    for metric, (header, scale) in STABILITY_COLUMNS.items():
        wide[metric] = wide[metric] * scale
    wide = wide.rename(columns={metric: header for metric, (header, _) in STABILITY_COLUMNS.items()})
    return wide.reset_index().sort_values(ROW_ORDER + ["task"], ignore_index=True)


def stability_markdown(frame: pd.DataFrame, title: str) -> str:
    """The stability table as Markdown: one line per (variant, task); ESS and n as whole numbers."""
    values = [header for header, _ in STABILITY_COLUMNS.values()]
    header = ["model", "method", "healing", "target", "task", *values]
    lines = [f"# {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, row in frame.iterrows():
        cells = [str(row["model"]), str(row["method"]), str(row["healing"])]
        cells += [target_label(row["target_sparsity"], row["target_layers"]), str(row["task"])]
        for column in values:
            digits = 0 if column in ("ESS", "n") else 1
            cells.append("" if pd.isna(row[column]) else f"{row[column]:.{digits}f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _best_rows(frame: pd.DataFrame, column: str) -> pd.Series:
    """Per (model, target) among compressed rows: is this row the best value of `column`?"""
    compressed = frame["method"] != "dense"
    best = frame[compressed].groupby(["model", "target_sparsity", "target_layers"])[column].transform("max")
    return compressed & frame[column].eq(best.reindex(frame.index))


def _format(frame: pd.DataFrame, bold: tuple[str, str]) -> list[list[str]]:
    value_cols = [c for c in frame.columns if c not in VARIANT_KEYS]
    best = {c: _best_rows(frame, c) for c in value_cols}
    rows = []
    for i, row in frame.iterrows():
        target = target_label(row["target_sparsity"], row["target_layers"])
        cells = [str(row["model"]), str(row["method"]), str(row["healing"]), target]
        for c in value_cols:
            text = "" if pd.isna(row[c]) else f"{row[c]:.1f}"
            cells.append(f"{bold[0]}{text}{bold[1]}" if text and best[c].loc[i] else text)
        rows.append(cells)
    return rows


def to_markdown(frame: pd.DataFrame, title: str) -> str:
    header = ["model", "method", "healing", "target", *[c for c in frame.columns if c not in VARIANT_KEYS]]
    lines = [f"# {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cells) + " |" for cells in _format(frame, ("**", "**"))]
    return "\n".join(lines) + "\n"


def to_latex(frame: pd.DataFrame) -> str:
    header = ["model", "method", "healing", "target", *[c for c in frame.columns if c not in VARIANT_KEYS]]
    escape = lambda text: text.replace("_", r"\_")  # noqa: E731
    lines = [
        r"\begin{tabular}{" + "l" * 4 + "r" * (len(header) - 4) + "}",
        r"\toprule",
        " & ".join(escape(h) for h in header) + r" \\",
        r"\midrule",
    ]
    lines += [" & ".join(escape(c) for c in cells) + r" \\" for cells in _format(frame, (r"\textbf{", "}"))]
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def write_tables(all_csv: str | Path, main_md: str | Path, main_tex: str | Path, stability_md: str | Path) -> None:
    table = pd.read_csv(all_csv)
    main = main_table(table)
    write_text(
        main_md,
        to_markdown(
            main, "Zero-shot accuracy (%), Avg and RA (% of dense Avg); best compressed value per target in bold"
        ),
    )
    write_text(main_tex, to_latex(main))
    write_text(
        stability_md,
        stability_markdown(
            stability_table(table),
            "Stability vs the dense model (%), prediction agreement (%), effective sample size of the stability "
            "weights (ESS) of n examples, and the compressed model's acc_ppl (%)",
        ),
    )
