"""Gather every result file into results/tables/all.csv: one tidy row per (variant, task, metric)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from streamline.atomic import read_json, write_with
from streamline.provenance import now_iso, write_provenance

# The metrics that measure the machine a job ran on (speed, wall time, memory), not the model: two runs of the same
# config give different values, every other row of all.csv is reproduced exactly (tests/test_slurm.py compares a
# SLURM run with a local one; benchmarks/gpu_check.py reports them as timings, not differences).
MACHINE_METRICS = ("prefill_tok_s", "decode_tok_s", "train_seconds", "peak_rss_mb", "peak_gpu_mb")

COLUMNS = [
    "model",
    "method",
    "healing",
    "target_sparsity",
    "target_layers",
    "actual_sparsity",
    "sparsity_of",
    "layers_removed",
    "removed_layers",
    "params",
    "task",
    "metric",
    "value",
    "stderr",
    "n_examples",
    "seed",
    "config_hash",
    "dtype",
    "experiment",
    "variant_key",
    "training_scale",
    "training_tokens",
    "variant",  # `dense` or `{method}-{healing}/{target}/{key}`: the name paired.csv uses
]


# What all.csv takes from stability.json per task (choice_kl: issue 22's continuous distance from the dense model).
STABILITY_METRICS = ("stability", "stability_ess", "prediction_agreement", "choice_kl")


def variant_info(model: str, variant: str, manifests: dict[str, dict], compressed: dict[tuple[str, str], dict]) -> dict:
    if variant == "dense":
        return {
            "model": model,
            "method": "dense",
            "healing": "none",
            "target_sparsity": 0.0,
            "target_layers": 0,
            "actual_sparsity": 0.0,
            "sparsity_of": "",
            "layers_removed": 0,
            "removed_layers": "",
            "params": manifests[model]["parameters"],
        }
    plan = compressed[(model, variant)]["plan"]
    return {
        "model": model,
        "method": plan["method"],
        "healing": plan["healing"],
        "target_sparsity": plan["target_sparsity"],  # None (empty) for a layer-count target
        "target_layers": plan.get("target_layers"),  # None (empty) for a sparsity target
        "actual_sparsity": plan["actual_sparsity"],
        "sparsity_of": plan.get("sparsity_of", "all"),  # plans written before sparsity_of counted all parameters
        "layers_removed": plan["num_layers_removed"],
        "removed_layers": " ".join(str(i) for i in plan["removed_layers"]),
        "params": plan["params_after"],
    }


def _metric_rows(accuracy: dict, ppl: dict, stats: dict, stability: dict, training: dict | None) -> list[dict]:
    rows: list[dict[str, Any]] = []
    for task, result in accuracy.items():
        for metric, entry in result["metrics"].items():
            rows.append(
                {
                    "task": task,
                    "metric": metric,
                    "value": entry["value"],
                    "stderr": entry["stderr"],
                    "n_examples": result["n_examples"],
                }
            )
    rows.append(
        {
            "task": ppl.get("dataset", "wikitext2"),
            "metric": "perplexity",
            "value": ppl["perplexity"],
            "n_examples": ppl["windows"],
        }
    )
    for task, result in stability.items():
        for metric in STABILITY_METRICS:
            if metric in result:  # stability_ess, choice_kl: absent from stability.json files written before them
                rows.append(
                    {"task": task, "metric": metric, "value": result[metric], "n_examples": result["n_examples"]}
                )
    for metric in ("prefill_tok_s", "decode_tok_s", "checkpoint_bytes", "num_layers"):
        rows.append({"task": "", "metric": metric, "value": stats[metric]})
    if training is not None:
        rows.append({"task": "", "metric": "train_seconds", "value": training.get("train_seconds", 0.0)})
        rows.append({"task": "", "metric": "train_tokens", "value": training.get("tokens_seen", 0)})
        for metric in ("trainable_params", "peak_rss_mb", "peak_gpu_mb"):  # the healing job's cost (paper.healing_cost)
            if metric in training:
                rows.append({"task": "", "metric": metric, "value": training[metric]})
    return rows


def training_tokens(record: dict | None) -> int:
    """Tokens the healing trained on: training windows x seq_len of its data split (one epoch; the
    `train_tokens` metric counts every epoch), 0 when nothing trained (or for the dense model)."""
    split = (record or {}).get("data_split")
    return int(split["train_windows"] * split["seq_len"]) if split else 0


def build_all_table(
    entries: Iterable[dict[str, Any]],
    manifests: Iterable[str],
    out_path: str | Path,
    config_hash: str,
    seed: int,
    experiment: str,
) -> pd.DataFrame:
    """all.csv from one record per (model, variant) of the experiment, in order: `model`, `variant` (`dense` or
    `{method}-{healing}/{target}/{key}`), `variant_key`, `training_scale` (None where nothing trains) and the
    paths of its `compressed` record (None for dense), `accuracy`, `perplexity`, `model_stats` and `stability`
    files. Exactly these variants become rows, whatever else lies under results/."""
    started = now_iso()
    manifest_by_model = {Path(p).parent.name: read_json(p) for p in manifests}
    rows = []
    for entry in entries:
        model, variant = entry["model"], entry["variant"]
        record = read_json(entry["compressed"]) if entry["compressed"] else None
        info = variant_info(model, variant, manifest_by_model, {(model, variant): record})
        stats = read_json(entry["model_stats"])
        keyed = {
            "experiment": experiment,
            "variant_key": entry["variant_key"],
            "training_scale": entry["training_scale"],
            "training_tokens": training_tokens(record),
            "variant": variant,
        }
        for row in _metric_rows(
            read_json(entry["accuracy"]),
            read_json(entry["perplexity"]),
            stats,
            read_json(entry["stability"]),
            record["training"] if record else None,
        ):
            # dtype: the compute dtype the evaluation resolved (`dtype: auto` depends on the hardware)
            rows.append({**info, **row, "seed": seed, "config_hash": config_hash, "dtype": stats.get("dtype"), **keyed})
    table = pd.DataFrame(rows, columns=COLUMNS)
    table["target_layers"] = table["target_layers"].astype("Int64")  # whole numbers, empty for sparsity targets
    write_with(out_path, lambda tmp: table.to_csv(tmp, index=False))
    write_provenance(
        Path(out_path).parent,
        config={"config_hash": config_hash, "experiment": experiment},
        seed=seed,
        device="cpu",
        started=started,
        step="aggregate",
    )
    return table
