"""One row per variant with every number the tables, figures and paper items show, and their intervals.

`variant_frame` reads all.csv (collect.py) and, where the experiment has it, paired.csv (paired.py). A row is a
variant: (model, method, healing, target_sparsity, target_layers, training_scale). Its columns:

- each task's accuracy (%): the first of ACCURACY_PREFERENCE the task reports (acc_ppl, the paper's OpenCompass
  PPL-mode rule; else acc_norm; else acc) — one preference for every table, figure and paper item;
- `Avg` (mean over tasks), `RA` (Avg as % of the same model's dense Avg), `stability` and
  `prediction_agreement` (%, means over tasks), `stability_ess`, `stability_n`, `gold_logprob` and `choice_kl`
  (means over tasks), `perplexity`, the healing cost (COST_METRICS), `training_tokens`, the removed layers, and `x`
  (the target sparsity; the achieved one for a layer-count target);
- for each value column c that paired.csv covers: `c:low` / `c:high` (its own interval), `c:vs_removal`
  (+1 / -1 when its paired difference from plain removal of the same window is resolved better / worse, 0 when
  not resolved, missing without a removal row), `c:removal_difference` / `_low` / `_high` (that difference and
  its interval) and `c:best` (the best base-budget value at its target, resolved
  against the runner-up). The renderer and the figures read these; no table bolds a tie.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from streamline.reporting.paired import ACCURACY_PREFERENCE, LOWER_IS_BETTER

VARIANT_KEYS = ["model", "method", "healing", "target_sparsity", "target_layers"]
KEYS = [*VARIANT_KEYS, "training_scale"]
# Row order: per model the dense row, the sparsity targets ascending, then the layer-count targets ascending, and
# within one target every method and healing, so variants at matched sparsity or layer count sit together.
ROW_ORDER = ["model", "target_layers", "target_sparsity", "method", "healing", "training_scale"]
COST_METRICS = ("train_seconds", "train_tokens", "trainable_params", "peak_rss_mb", "peak_gpu_mb")
# frame column -> (paired.csv task, metric, scale to the frame's unit); task columns are added per task.
PAIRED_COLUMNS = {
    "Avg": ("Avg", "accuracy", 100.0),
    "RA": ("Avg", "RA", 1.0),
    "stability": ("Avg", "stability", 100.0),
    "gold_logprob": ("Avg", "gold_logprob", 1.0),
    "choice_kl": ("Avg", "choice_kl", 1.0),
}
PERCENT_METRICS = ("acc", "acc_norm", "acc_ppl", "stability", "prediction_agreement")


def with_targets(table: pd.DataFrame) -> pd.DataFrame:
    """all.csv with both target columns and the training scale filled, so every variant groups and sorts by its
    target: a sparsity target gets target_layers 0, a layer-count target (l{n}) target_sparsity 0, the dense model
    both 0; training_scale 1 where nothing trains (and in tables written before scales existed)."""
    out = table.copy()
    if "target_layers" not in out:
        out["target_layers"] = 0
    out["target_layers"] = out["target_layers"].fillna(0).astype(int)
    out["target_sparsity"] = out["target_sparsity"].fillna(0.0)
    if "training_scale" not in out:
        out["training_scale"] = 1.0
    out["training_scale"] = pd.to_numeric(out["training_scale"], errors="coerce").fillna(1.0)
    out["task"] = out["task"].fillna("")
    return out


def base_budget(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows of each variant's smallest training budget, so a table of one row per variant is not split or
    averaged across the `training.scales` budgets."""
    smallest = frame.groupby(VARIANT_KEYS, dropna=False)["training_scale"].transform("min")
    return frame[frame["training_scale"] == smallest]


def target_label(row: pd.Series) -> str:
    """The target as every table prints it: '' for the dense model, 'l8' for 8 removed layers, else the sparsity
    ('0.25'), with the training budget where it is not the base one ('0.25 (2x tokens)')."""
    if row["method"] == "dense":
        return ""
    label = f"l{int(row['target_layers'])}" if row["target_layers"] else f"{row['target_sparsity']:g}"
    scale = row.get("training_scale", 1)
    return label if scale == 1 else f"{label} ({scale:g}x tokens)"


def relative_accuracy(avg: pd.Series, frame: pd.DataFrame) -> pd.Series:
    """RA: each Avg as % of the same model's dense Avg (`frame` gives each row's model and method)."""
    dense = avg[frame["method"] == "dense"].groupby(frame["model"]).first()
    return 100 * avg / frame["model"].map(dense)


def _first_present(rows: pd.DataFrame, order: tuple[str, ...]) -> pd.DataFrame:
    """Per (variant, task), the row of the first metric of `order` that the task reports."""
    rank = {metric: i for i, metric in enumerate(order)}
    picked = rows[rows["metric"].isin(rank)].assign(_rank=lambda f: f["metric"].map(rank))
    return picked.sort_values("_rank", kind="stable").drop_duplicates([*KEYS, "task"])


def _per_variant(frame: pd.DataFrame, metric: str, how: str = "mean") -> pd.Series:
    rows = frame[frame["metric"] == metric]
    return rows.groupby(KEYS)["value"].agg(how) if not rows.empty else pd.Series(dtype=float)


def variant_frame(table: pd.DataFrame, paired: pd.DataFrame | None = None) -> tuple[pd.DataFrame, list[str]]:
    """One row per variant (KEYS) with every number (module docstring) and the accuracy tasks in order."""
    frame = with_targets(table)
    info = [c for c in ("variant", "actual_sparsity", "layers_removed", "removed_layers") if c in frame]
    out = frame.drop_duplicates(KEYS).set_index(KEYS)[info].copy()
    accuracy = _first_present(frame[frame["task"] != ""], ACCURACY_PREFERENCE)
    tasks = sorted(set(accuracy["task"]))
    if tasks:
        wide = accuracy.pivot_table(index=KEYS, columns="task", values="value", aggfunc="first") * 100
        out = out.join(wide[tasks])
        out["Avg"] = out[tasks].mean(axis=1, skipna=False)
        out["acc_metric"] = accuracy.groupby(KEYS)["metric"].agg(lambda m: "/".join(sorted(set(m))))
    else:
        out["Avg"] = np.nan
    out = out.reset_index()
    out["RA"] = relative_accuracy(out["Avg"], out)
    out = out.set_index(KEYS)
    for metric in ("stability", "prediction_agreement", "stability_ess", "gold_logprob", "choice_kl"):
        out[metric] = _per_variant(frame, metric) * (100 if metric in PERCENT_METRICS else 1)
    out["stability_n"] = frame[frame["metric"] == "stability"].groupby(KEYS)["n_examples"].mean()
    out["perplexity"] = _per_variant(frame, "perplexity", "first")
    for metric in COST_METRICS:
        out[metric] = _per_variant(frame, metric, "first")
    out["training_tokens"] = (
        frame.drop_duplicates(KEYS).set_index(KEYS)["training_tokens"] if "training_tokens" in frame
        else out["train_tokens"]
    )
    out = out.reset_index()
    actual = out["actual_sparsity"] if "actual_sparsity" in out else pd.Series(0.0, index=out.index)
    out["x"] = out["target_sparsity"].where(out["target_layers"] == 0, actual)
    out = out.sort_values(ROW_ORDER, ignore_index=True)
    if paired is not None and "variant" in out:
        out = with_intervals(out, paired, variant_columns(tasks, _task_metrics(accuracy), _perplexity_task(frame)))
    return out, tasks


def _task_metrics(accuracy: pd.DataFrame) -> dict[str, str]:
    """task -> the accuracy metric its column shows (the same for every variant of one task)."""
    return accuracy.drop_duplicates("task").set_index("task")["metric"].to_dict()


def _perplexity_task(frame: pd.DataFrame) -> str | None:
    rows = frame.loc[frame["metric"] == "perplexity", "task"]
    return rows.iloc[0] if not rows.empty else None


def variant_columns(tasks: list[str], task_metric: dict[str, str], ppl_task: str | None) -> dict[str, tuple]:
    """Frame column -> (paired.csv task, metric, scale) of a variant frame."""
    columns = dict(PAIRED_COLUMNS)
    columns.update({task: (task, task_metric[task], 100.0) for task in tasks if task in task_metric})
    if ppl_task is not None:
        columns["perplexity"] = (ppl_task, "perplexity", 1.0)
    return columns


def with_intervals(out: pd.DataFrame, paired: pd.DataFrame, columns: dict[str, tuple]) -> pd.DataFrame:
    """`out` with each of `columns` (frame column -> (paired task, metric, scale); task None: the row's own `task`)
    given its interval, its mark against plain removal and its resolved-best flag (module docstring)."""
    paired = paired.assign(variant=paired["variant"].astype(str), task=paired["task"].astype(str))
    by = {name: rows.set_index(["variant", "task", "metric"]) for name, rows in paired.groupby("comparison")}
    names = out["variant"].fillna("dense").astype(str)
    for column, (task, metric, scale) in columns.items():
        row_tasks = out["task"].astype(str) if task is None else [task] * len(out)
        keys = pd.MultiIndex.from_arrays([names, row_tasks, [metric] * len(out)])
        if "value" in by:
            own = by["value"].reindex(keys)
            out[f"{column}:low"] = own["low"].to_numpy() * scale
            out[f"{column}:high"] = own["high"].to_numpy() * scale
        if "removal" in by:
            diff = by["removal"].reindex(keys)
            sign = np.sign(diff["difference"].to_numpy(dtype=float)) * (-1 if metric in LOWER_IS_BETTER else 1)
            resolved = diff["resolved"].astype("boolean").to_numpy(dtype=float, na_value=np.nan)
            out[f"{column}:vs_removal"] = np.where(np.isnan(resolved), np.nan, sign * resolved)
            for part in ("difference", "low", "high"):  # the difference from plain removal and its interval
                out[f"{column}:removal_{part}"] = diff[part].to_numpy(dtype=float) * scale
        if "runner_up" in by:
            best = by["runner_up"].reindex(keys)["resolved"].astype("boolean")
            out[f"{column}:best"] = best.fillna(False).to_numpy(dtype=bool)
    return out


def paper_target(frame: pd.DataFrame, wanted: float = 0.25) -> float | None:
    """The configured sparsity target closest to `wanted` (None when the experiment has only layer counts)."""
    targets = sorted(set(frame.loc[(frame["method"] != "dense") & (frame["target_layers"] == 0), "target_sparsity"]))
    if not targets:
        return None
    return min(targets, key=lambda s: (abs(s - wanted), s))


def at_target(frame: pd.DataFrame, target: float | None, base_scale: bool = True) -> pd.DataFrame:
    """The dense rows and the compressed rows at sparsity `target` (the base training budget only if asked)."""
    keep = (frame["method"] == "dense") | ((frame["target_layers"] == 0) & (frame["target_sparsity"] == target))
    rows = frame[keep]
    return base_budget(rows) if base_scale else rows


def read_frame(all_csv, paired_csv=None) -> tuple[pd.DataFrame, list[str]]:
    """variant_frame of the files (paired_csv None or missing: no intervals)."""
    from pathlib import Path

    paired = pd.read_csv(paired_csv) if paired_csv is not None and Path(paired_csv).is_file() else None
    return variant_frame(pd.read_csv(all_csv), paired)
