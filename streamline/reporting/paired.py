"""Paired bootstrap intervals for every number the tables compare (issue 22): tables/paired.csv.

Every compressed variant is evaluated on the same examples as the dense model (the harness's first `limit`
documents of each task) and on the same perplexity windows, so a difference between two variants is a paired
difference. The bootstrap resamples EXAMPLES, not variants: per (model, task) one seeded index matrix of B
resamples of the task's n examples is drawn once and used for every variant of that model, so each variant's
resampled statistic and its partner's come from the same examples (paired), and every comparison of the run reads
the same draws. Perplexity resamples its windows the same way. Averages over tasks (`Avg`) are stratified: each
task is resampled within itself and the per-task statistics are averaged per draw. Intervals are percentile
intervals of the B draws; a difference is `resolved` when its interval excludes 0.

Per-example values (each task's documents in the dense model's order, matched by doc_id):
- `acc`, `acc_norm`: the harness's own per-sample 0/1 (samples/{task}.jsonl);
- `acc_ppl`, `gold_logprob`: from the per-choice PPL scores (samples/{task}.choices.json; choice_metrics.py);
- `choice_kl`: each example's KL from the dense model's choice distribution (0 for the dense model);
- `stability`: each example's agreement a_i with the dense model's right/wrong (the configured decision rule),
  with the dense model's confidence weights w_i (stability.py), statistic sum w a / sum w over the draw;
- `perplexity` (task = the perplexity data set): exp(sum of the drawn windows' NLL / their tokens).
Over tasks (`task` = "Avg"): `accuracy` (each task's acc_ppl, else acc_norm, else acc: ACCURACY_PREFERENCE, the
tables' Avg), `gold_logprob`, `choice_kl`, `stability`, and `RA` = 100 x Avg accuracy / the dense model's.

Rows (`comparison`): `value` (the variant's own value; low/high bound it), `dense` (variant - dense),
`removal` (variant - plain removal of the same window: `{method}-none` at the same target), `runner_up` (the best
base-budget variant of a (model, target) - the second best, so a table bolds a best value only when it is
resolved, never a tie).
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from streamline.atomic import read_json, write_with
from streamline.evaluation.choice_metrics import choice_kl, record_gold_logprob
from streamline.evaluation.stability import CORRECTNESS, stable_softmax

# A task's accuracy in every table, the first the task reports (acc_ppl: the paper's OpenCompass PPL-mode rule).
ACCURACY_PREFERENCE = ("acc_ppl", "acc_norm", "acc")
HARNESS_METRICS = ("acc", "acc_norm")  # mean-aggregated 0/1 per sample in the harness's records
AVG_METRICS = ("accuracy", "gold_logprob", "choice_kl", "stability")
LOWER_IS_BETTER = frozenset({"perplexity", "choice_kl"})
COLUMNS = [
    "model",
    "variant",
    "comparison",
    "reference",
    "task",
    "metric",
    "value",
    "reference_value",
    "difference",
    "low",
    "high",
    "n",
    "resolved",
]


@dataclass(frozen=True)
class Bootstrap:
    """The resampling: `samples` draws, a `confidence` interval, seeded by `seed` (config `intervals`, whose schema
    holds the defaults)."""

    samples: int
    confidence: float
    seed: int

    def indices(self, n: int, *names: str) -> np.ndarray:
        """(samples, n) draws of n indices, the same for every call with the same names (model, task)."""
        rng = np.random.default_rng([self.seed, *(zlib.crc32(name.encode()) for name in names)])
        return rng.integers(0, n, size=(self.samples, n))

    def interval(self, draws: np.ndarray) -> tuple[float, float]:
        tail = (1 - self.confidence) / 2
        low, high = np.quantile(draws, [tail, 1 - tail])
        return float(low), float(high)


@dataclass
class Estimate:
    """One statistic: its value on all examples, its B bootstrap draws, and the examples behind it."""

    value: float
    draws: np.ndarray  # (B,)
    n: int


def _statistic(values: np.ndarray, idx: np.ndarray, weights: np.ndarray | None = None) -> Estimate:
    """Mean (or weighted mean) of `values` (n,) over all examples and over each row of `idx` (B, n)."""
    if weights is None:
        return Estimate(float(values.mean()), values[idx].mean(axis=1), len(values))
    value = float((weights * values).sum() / weights.sum())
    return Estimate(value, (weights[idx] * values[idx]).sum(axis=1) / weights[idx].sum(axis=1), len(values))


def _mean_of(estimates: list[Estimate]) -> Estimate:
    return Estimate(
        float(np.mean([e.value for e in estimates])),
        np.mean([e.draws for e in estimates], axis=0),
        sum(e.n for e in estimates),
    )


# ---- per-example values --------------------------------------------------------------------------------------


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def load_examples(samples_dir: str | Path) -> dict[str, dict[int, dict[str, Any]]]:
    """task -> doc_id -> {harness metric: 0/1, "record": the choices.json record (multiple-choice tasks)}."""
    out: dict[str, dict[int, dict[str, Any]]] = {}
    for path in sorted(Path(samples_dir).glob("*.jsonl")):
        task = path.name.removesuffix(".jsonl")
        out[task] = {
            int(s["doc_id"]): {m: float(s[m]) for m in HARNESS_METRICS if isinstance(s.get(m), (int, float))}
            for s in _read_jsonl(path)
        }
        choices = path.with_name(f"{task}.choices.json")
        if choices.is_file():
            for record in read_json(choices):
                out[task].setdefault(int(record["doc_id"]), {})["record"] = record
    return out


def _right(record: dict[str, Any], correctness: str) -> bool | None:
    return record.get("correct_ppl") if correctness == "acc_ppl" else record.get("correct")


def task_values(
    dense: dict[int, dict[str, Any]], variant: dict[int, dict[str, Any]], correctness: str, where: str
) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
    """metric -> (per-example values in the dense model's doc order, stability weights or None) of one task."""
    ids = sorted(dense)
    if set(variant) != set(ids):
        missing = sorted(set(ids) - set(variant))[:5]
        raise ValueError(f"{where}: its examples are not the dense model's (missing doc_ids {missing}); re-run it")
    out: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
    for metric in HARNESS_METRICS:
        if all(metric in variant[i] for i in ids):
            out[metric] = (np.array([variant[i][metric] for i in ids]), None)
    if not all("record" in dense[i] and "record" in variant[i] for i in ids):
        return out  # not multiple choice: no PPL scores
    d_rec, v_rec = [dense[i]["record"] for i in ids], [variant[i]["record"] for i in ids]
    if all(r.get("correct_ppl") is not None for r in v_rec):
        out["acc_ppl"] = (np.array([float(r["correct_ppl"]) for r in v_rec]), None)
    gold = [record_gold_logprob(r) for r in v_rec]
    if all(g is not None for g in gold):
        out["gold_logprob"] = (np.array(gold), None)
    if all(r.get("ppl") is not None for r in d_rec + v_rec):
        out["choice_kl"] = (np.array([choice_kl(d["ppl"], v["ppl"]) for d, v in zip(d_rec, v_rec)]), None)
        rights = [(_right(d, correctness), _right(v, correctness)) for d, v in zip(d_rec, v_rec)]
        if all(a is not None and b is not None for a, b in rights):
            weights = np.array(stable_softmax([float(np.std(d["ppl"])) for d in d_rec]))
            out["stability"] = (np.array([float(a == b) for a, b in rights]), weights)
    return out


# ---- estimates per variant -----------------------------------------------------------------------------------


def variant_estimates(
    model: str,
    dense: dict[str, dict[int, dict[str, Any]]],
    variant: dict[str, dict[int, dict[str, Any]]],
    ppl: dict[str, Any],
    boot: Bootstrap,
    correctness: str,
    where: str,
) -> dict[tuple[str, str], Estimate]:
    """(task, metric) -> Estimate for one variant: per task, the Avg rows (without RA) and perplexity."""
    out: dict[tuple[str, str], Estimate] = {}
    for task, docs in sorted(dense.items()):
        if task not in variant:
            raise ValueError(f"{where}: task {task!r} has no per-example records; re-run its accuracy step")
        idx = boot.indices(len(docs), model, task)
        for metric, (values, weights) in task_values(docs, variant[task], correctness, f"{where} {task}").items():
            out[(task, metric)] = _statistic(values, idx, weights)
    tasks = sorted({task for task, _ in out})
    for metric in AVG_METRICS:
        per_task = [_task_accuracy(out, task) if metric == "accuracy" else out.get((task, metric)) for task in tasks]
        per_task = [e for e in per_task if e is not None]
        if per_task:
            out[("Avg", metric)] = _mean_of(per_task)
    if ppl.get("window_nll"):
        nll = np.asarray(ppl["window_nll"], dtype=float)
        tokens = int(ppl["seq_len"]) - 1
        idx = boot.indices(len(nll), model, "perplexity")
        out[(ppl.get("dataset", "wikitext2"), "perplexity")] = Estimate(
            float(np.exp(nll.sum() / (len(nll) * tokens))), np.exp(nll[idx].sum(axis=1) / (idx.shape[1] * tokens)),
            len(nll),
        )
    return out


def _task_accuracy(estimates: dict[tuple[str, str], Estimate], task: str) -> Estimate | None:
    return next((estimates[(task, m)] for m in ACCURACY_PREFERENCE if (task, m) in estimates), None)


def _with_ra(estimates: dict[tuple[str, str], Estimate], dense: dict[tuple[str, str], Estimate]) -> None:
    """Add ("Avg", "RA"): 100 x the Avg accuracy as a share of the dense model's, per draw."""
    if ("Avg", "accuracy") in estimates and ("Avg", "accuracy") in dense:
        mine, base = estimates[("Avg", "accuracy")], dense[("Avg", "accuracy")]
        estimates[("Avg", "RA")] = Estimate(100 * mine.value / base.value, 100 * mine.draws / base.draws, mine.n)


# ---- rows ------------------------------------------------------------------------------------------------------


def _row(model, variant, comparison, reference, key, mine: Estimate, other: Estimate | None, boot: Bootstrap) -> dict:
    task, metric = key
    if other is None:
        low, high = boot.interval(mine.draws)
        return {"model": model, "variant": variant, "comparison": comparison, "reference": reference, "task": task,
                "metric": metric, "value": mine.value, "reference_value": np.nan, "difference": np.nan,
                "low": low, "high": high, "n": mine.n, "resolved": np.nan}
    low, high = boot.interval(mine.draws - other.draws)
    return {"model": model, "variant": variant, "comparison": comparison, "reference": reference, "task": task,
            "metric": metric, "value": mine.value, "reference_value": other.value,
            "difference": mine.value - other.value, "low": low, "high": high, "n": mine.n,
            "resolved": bool(low > 0 or high < 0)}


def paired_rows(entries: Iterable[dict[str, Any]], boot: Bootstrap, correctness: str = CORRECTNESS[0]) -> pd.DataFrame:
    """paired.csv's rows for one experiment. `entries`: one per (model, variant), dense first per model, each with
    `model`, `variant` (`dense` or `{method}-{healing}/{target}/{key}`), `method`, `healing`, `target`,
    `training_scale` (None where nothing trains), `samples` (the accuracy step's samples folder) and `perplexity`
    (its ppl.json)."""
    if correctness not in CORRECTNESS:
        raise ValueError(f"stability_correctness {correctness!r} is unknown; allowed: {', '.join(CORRECTNESS)}")
    entries = list(entries)
    rows: list[dict[str, Any]] = []
    for model in dict.fromkeys(e["model"] for e in entries):
        mine = [e for e in entries if e["model"] == model]
        dense_entry = next((e for e in mine if e["variant"] == "dense"), None)
        if dense_entry is None:
            raise ValueError(f"model {model!r}: the paired intervals need the dense model's records")
        dense_examples = load_examples(dense_entry["samples"])
        estimates = {}
        for entry in mine:
            examples = dense_examples if entry is dense_entry else load_examples(entry["samples"])
            where = f"{model}/{entry['variant']}"
            estimates[entry["variant"]] = variant_estimates(
                model, dense_examples, examples, read_json(entry["perplexity"]), boot, correctness, where
            )
        for entry in mine:
            _with_ra(estimates[entry["variant"]], estimates["dense"])
        rows += _model_rows(model, mine, estimates, boot)
    frame = pd.DataFrame(rows, columns=COLUMNS)
    frame["resolved"] = frame["resolved"].astype("boolean")
    return frame


def _model_rows(model: str, entries: list[dict], estimates: dict[str, dict], boot: Bootstrap) -> list[dict]:
    rows = []
    dense = estimates["dense"]
    removal = {(e["method"], e["target"]): e["variant"] for e in entries if e.get("healing") == "none"}
    for entry in entries:
        name, own = entry["variant"], estimates[entry["variant"]]
        rows += [_row(model, name, "value", "", key, est, None, boot) for key, est in own.items()]
        if name == "dense":
            continue
        rows += [_row(model, name, "dense", "dense", k, e, dense[k], boot) for k, e in own.items() if k in dense]
        plain = removal.get((entry["method"], entry["target"]))
        if plain is not None and plain != name:
            ref = estimates[plain]
            rows += [_row(model, name, "removal", plain, k, e, ref[k], boot) for k, e in own.items() if k in ref]
    for group in _base_budget_groups(entries).values():
        keys = set.intersection(*(set(estimates[v]) for v in group)) if len(group) > 1 else set()
        for key in sorted(keys):
            ranked = sorted(group, key=lambda v: estimates[v][key].value, reverse=key[1] not in LOWER_IS_BETTER)
            best, second = ranked[0], ranked[1]
            rows.append(_row(model, best, "runner_up", second, key, estimates[best][key], estimates[second][key], boot))
    return rows


def _base_budget_groups(entries: list[dict]) -> dict[str, list[str]]:
    """target -> the compressed variants at it, each (method, healing) at its smallest training budget only (the
    rows the summary tables show)."""
    smallest: dict[tuple, dict] = {}
    for entry in entries:
        if entry["variant"] == "dense":
            continue
        key = (entry["method"], entry["healing"], entry["target"])
        scale = entry.get("training_scale") or 0
        if key not in smallest or scale < (smallest[key].get("training_scale") or 0):
            smallest[key] = entry
    groups: dict[str, list[str]] = {}
    for entry in smallest.values():
        groups.setdefault(entry["target"], []).append(entry["variant"])
    return groups


def write_paired(
    entries: Iterable[dict[str, Any]], out_path: str | Path, boot: Bootstrap, correctness: str = CORRECTNESS[0]
) -> pd.DataFrame:
    frame = paired_rows(entries, boot, correctness)
    write_with(out_path, lambda tmp: frame.to_csv(tmp, index=False))
    return frame
