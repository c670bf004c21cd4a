"""The experiment's summary tables from all.csv and paired.csv: main.md/.tex (accuracy, Avg, RA, gold_logprob,
perplexity per variant) and stability.md (per variant and task), rendered by render.py with their intervals."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from streamline.atomic import write_text
from streamline.reporting import render
from streamline.reporting.frame import (
    KEYS,
    PERCENT_METRICS,
    ROW_ORDER,
    base_budget,
    read_frame,
    with_intervals,
    with_targets,
)
from streamline.reporting.render import Column


def accuracy_note(frame: pd.DataFrame, tasks: list[str]) -> str:
    """Which accuracy metric each task's column shows (ACCURACY_PREFERENCE)."""
    used = sorted(set("/".join(frame.get("acc_metric", pd.Series(dtype=str)).dropna()).split("/")) - {""})
    return (
        f"accuracy (%) per task: {', '.join(used) or 'none'} (acc_ppl, the paper's PPL-mode rule, where the task "
        f"reports it, else acc_norm, else acc); tasks: {', '.join(tasks) or 'none'}"
    )


def main_columns(tasks: list[str]) -> list[Column]:
    return [
        *(Column(task, task) for task in tasks),
        Column("Avg", "Avg"),
        Column("RA", "RA (%)"),
        Column("gold_logprob", "gold logprob", 3),
        Column("perplexity", "PPL"),
    ]


def main_table(all_csv: str | Path, paired_csv: str | Path | None, md: str | Path, tex: str | Path) -> pd.DataFrame:
    """Every variant at its base training budget: accuracy per task, Avg, RA, the mean gold-choice log-probability
    and perplexity, each with its interval and mark."""
    frame, tasks = read_frame(all_csv, paired_csv)
    rows = base_budget(frame)
    notes = [
        accuracy_note(rows, tasks),
        "RA = Avg as % of the dense Avg; gold logprob = mean log-probability of the gold choice, softmax over the "
        "choices' PPL scores (0 is best); PPL = perplexity",
        render.interval_note(rows),
    ]
    columns = main_columns(tasks)
    title = "Zero-shot accuracy (%), Avg, RA, gold-choice log-probability and perplexity per variant"
    write_text(md, render.markdown(rows, columns, title, notes))
    write_text(tex, render.latex(rows, columns, notes))
    return rows


STABILITY_COLUMNS = [
    Column("stability", "stability (%)"),
    Column("prediction_agreement", "agreement (%)"),
    Column("stability_ess", "ESS", 0),
    Column("n_examples", "n", 0),
    Column("acc_ppl", "acc_ppl (%)"),
    Column("choice_kl", "choice KL", 3),
]


def task_frame(table: pd.DataFrame, paired: pd.DataFrame | None) -> pd.DataFrame:
    """One row per (compressed variant at its base budget, task with a stability): STABILITY_COLUMNS' metrics (%
    where they are shares) with the intervals paired.csv gives per task."""
    frame = base_budget(with_targets(table[table["method"] != "dense"]))
    stab = frame[frame["metric"] == "stability"]
    names = [c.key for c in STABILITY_COLUMNS]
    rows = frame[frame["metric"].isin(names) & frame["task"].isin(set(stab["task"]))]
    index = [*KEYS, "task"] + (["variant"] if "variant" in frame else [])
    wide = rows.pivot_table(index=index, columns="metric", values="value", aggfunc="first")
    wide["n_examples"] = stab.set_index(index)["n_examples"]
    wide = wide.reindex(columns=names)
    for metric in PERCENT_METRICS:
        if metric in wide:
            wide[metric] = wide[metric] * 100
    out = wide.reset_index().sort_values([*ROW_ORDER, "task"], ignore_index=True)
    if paired is not None and "variant" in out:
        metrics = {"stability": 100.0, "acc_ppl": 100.0, "choice_kl": 1.0}
        out = with_intervals(out, paired, {m: (None, m, scale) for m, scale in metrics.items()})
    return out


def stability_table(all_csv: str | Path, paired_csv: str | Path | None, md: str | Path) -> pd.DataFrame:
    table = pd.read_csv(all_csv)
    paired = pd.read_csv(paired_csv) if paired_csv is not None and Path(paired_csv).is_file() else None
    rows = task_frame(table, paired)
    notes = [
        "stability: softmax(dense per-choice PPL-score std)-weighted share of examples both models get right or "
        "both wrong; agreement: same predicted choice; ESS = 1 / sum w^2 of the n examples; choice KL = mean KL "
        "from the dense model's choice distribution softmax(-PPL score) to the variant's",
        render.interval_note(rows),
    ]
    title = "Stability against the dense model per task"
    write_text(md, render.markdown(rows, STABILITY_COLUMNS, title, notes, labels=[*render.LABELS, "task"]))
    return rows


def write_tables(
    all_csv: str | Path, paired_csv: str | Path | None, main_md: str | Path, main_tex: str | Path, stability_md: str | Path
) -> None:
    main_table(all_csv, paired_csv, main_md, main_tex)
    stability_table(all_csv, paired_csv, stability_md)
