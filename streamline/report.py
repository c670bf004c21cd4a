"""Gather every result file into results/tables/all.csv: one tidy row per (variant, task, metric)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from streamline.atomic import read_json, write_with
from streamline.provenance import now_iso, write_provenance

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
]


def _variant_of(path: Path, root: str) -> tuple[str, str]:
    """results/<root>/{model}/{variant...}/file -> (model, variant)."""
    parts = path.parts
    i = parts.index(root)
    return parts[i + 1], "/".join(parts[i + 2 : -1])


def _by_variant(paths: Iterable[str | Path], root: str) -> dict[tuple[str, str], Path]:
    return {_variant_of(Path(p), root): Path(p) for p in paths}


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
        for metric in ("stability", "stability_ess", "prediction_agreement"):
            if metric in result:  # stability_ess: absent from stability.json files written before it existed
                rows.append(
                    {"task": task, "metric": metric, "value": result[metric], "n_examples": result["n_examples"]}
                )
    for metric in ("prefill_tok_s", "decode_tok_s", "checkpoint_bytes", "num_layers"):
        rows.append({"task": "", "metric": metric, "value": stats[metric]})
    if training is not None:
        rows.append({"task": "", "metric": "train_seconds", "value": training.get("train_seconds", 0.0)})
        rows.append({"task": "", "metric": "train_tokens", "value": training.get("tokens_seen", 0)})
    return rows


def build_all_table(
    manifests: Iterable[str],
    compressed: Iterable[str],
    accuracy: Iterable[str],
    ppl: Iterable[str],
    stats: Iterable[str],
    stability: Iterable[str],
    out_path: str | Path,
    config_hash: str,
    seed: int,
) -> pd.DataFrame:
    started = now_iso()
    manifest_by_model = {Path(p).parent.name: read_json(p) for p in manifests}
    compressed_by_variant = {k: read_json(p) for k, p in _by_variant(compressed, "compressed").items()}
    ppl_by, stats_by, stab_by = (_by_variant(x, "eval") for x in (ppl, stats, stability))
    rows = []
    for (model, variant), acc_path in sorted(_by_variant(accuracy, "eval").items()):
        info = variant_info(model, variant, manifest_by_model, compressed_by_variant)
        training = compressed_by_variant[(model, variant)]["training"] if variant != "dense" else None
        stats = read_json(stats_by[(model, variant)])
        for row in _metric_rows(
            read_json(acc_path),
            read_json(ppl_by[(model, variant)]),
            stats,
            read_json(stab_by[(model, variant)]),
            training,
        ):
            # dtype: the compute dtype the evaluation resolved (`dtype: auto` depends on the hardware)
            rows.append({**info, **row, "seed": seed, "config_hash": config_hash, "dtype": stats.get("dtype")})
    table = pd.DataFrame(rows, columns=COLUMNS)
    table["target_layers"] = table["target_layers"].astype("Int64")  # whole numbers, empty for sparsity targets
    write_with(out_path, lambda tmp: table.to_csv(tmp, index=False))
    write_provenance(
        Path(out_path).parent,
        config={"config_hash": config_hash},
        seed=seed,
        device="cpu",
        started=started,
        step="aggregate",
    )
    return table
