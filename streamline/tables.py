"""Paper-shaped tables from all.csv: main accuracy table (Markdown + LaTeX) and the stability table."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from streamline.atomic import write_text

VARIANT_KEYS = ["model", "method", "healing", "target_sparsity"]


def task_accuracy(table: pd.DataFrame) -> pd.DataFrame:
    """One accuracy per (variant, task): acc_norm where the task reports it, else acc (the usual harness pick)."""
    acc = table[table["metric"].isin(["acc", "acc_norm"])]
    preferred = acc.sort_values("metric", ascending=False)  # acc_norm sorts before acc
    return preferred.drop_duplicates(VARIANT_KEYS + ["task"])[VARIANT_KEYS + ["task", "metric", "value"]]


def main_table(table: pd.DataFrame) -> pd.DataFrame:
    """Rows = variants, columns = tasks (accuracy, %), Avg, and RA = Avg as % of the dense model's Avg."""
    acc = task_accuracy(table)
    wide = acc.pivot_table(index=VARIANT_KEYS, columns="task", values="value").mul(100)
    wide["Avg"] = wide.mean(axis=1)
    dense_avg = wide.xs("dense", level="method")["Avg"].groupby(level="model").first()
    models = wide.index.get_level_values("model")
    wide["RA"] = 100 * wide["Avg"].to_numpy() / dense_avg.reindex(models).to_numpy()
    return wide.reset_index().sort_values(["model", "target_sparsity", "method", "healing"], ignore_index=True)


def stability_table(table: pd.DataFrame) -> pd.DataFrame:
    rows = table[(table["metric"] == "stability") & (table["method"] != "dense")]
    wide = rows.pivot_table(index=VARIANT_KEYS, columns="task", values="value").mul(100)
    wide["Avg"] = wide.mean(axis=1)
    return wide.reset_index().sort_values(["model", "target_sparsity", "method", "healing"], ignore_index=True)


def _best_rows(frame: pd.DataFrame, column: str) -> pd.Series:
    """Per (model, sparsity) among compressed rows: is this row the best value of `column`?"""
    compressed = frame["method"] != "dense"
    best = frame[compressed].groupby(["model", "target_sparsity"])[column].transform("max")
    return compressed & frame[column].eq(best.reindex(frame.index))


def _format(frame: pd.DataFrame, bold: tuple[str, str]) -> list[list[str]]:
    value_cols = [c for c in frame.columns if c not in VARIANT_KEYS]
    best = {c: _best_rows(frame, c) for c in value_cols}
    rows = []
    for i, row in frame.iterrows():
        cells = [str(row["model"]), str(row["method"]), str(row["healing"]), f"{row['target_sparsity']:g}"]
        for c in value_cols:
            text = "" if pd.isna(row[c]) else f"{row[c]:.1f}"
            cells.append(f"{bold[0]}{text}{bold[1]}" if text and best[c].loc[i] else text)
        rows.append(cells)
    return rows


def to_markdown(frame: pd.DataFrame, title: str) -> str:
    header = ["model", "method", "healing", "sparsity", *[c for c in frame.columns if c not in VARIANT_KEYS]]
    lines = [f"# {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cells) + " |" for cells in _format(frame, ("**", "**"))]
    return "\n".join(lines) + "\n"


def to_latex(frame: pd.DataFrame) -> str:
    header = ["model", "method", "healing", "sparsity", *[c for c in frame.columns if c not in VARIANT_KEYS]]
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
            main, "Zero-shot accuracy (%), Avg and RA (% of dense Avg); best compressed value per sparsity in bold"
        ),
    )
    write_text(main_tex, to_latex(main))
    write_text(stability_md, to_markdown(stability_table(table), "Stability vs the dense model (%)"))
