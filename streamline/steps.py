"""One function per workflow step: paths and plain settings in, files out (with provenance).

The workflow scripts only unpack `snakemake.input/params/output` and call one of these; tests call them
directly. `run` settings are {"dtype", "device", "data_mirror"} as in the config.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from safetensors.torch import load_file, save_file

from streamline import criteria, data, importance, prune
from streamline.atomic import atomic_path, read_json, write_json, write_with
from streamline.healing import run_healing
from streamline.models import compute_dtype, load_model, resolve_device
from streamline.provenance import now_iso, write_provenance
from streamline.training import TrainConfig


def _runtime(run: dict[str, Any]) -> tuple[str, torch.dtype]:
    device = resolve_device(run.get("device", "auto"))
    return device, compute_dtype(run.get("dtype", "auto"), device)


def _token_windows(tokenizer, dataset: str, mirror: Path | None, samples: int, seq_len: int, seed: int) -> torch.Tensor:
    return data.sample_windows(tokenizer, data.calibration_text(dataset, mirror), samples, seq_len, seed)


def similarity_step(
    model_dir: str | Path, out_path: str | Path, calibration: dict[str, Any], run: dict[str, Any]
) -> None:
    """One calibration pass over the dense model -> mean pair similarities of every residual state."""
    started = now_iso()
    device, dtype = _runtime(run)
    mirror = data.resolve_mirror(run.get("data_mirror"))
    model, tokenizer = load_model(model_dir, dtype, device)
    ids = _token_windows(
        tokenizer, calibration["dataset"], mirror, calibration["samples"], calibration["seq_len"], calibration["seed"]
    )
    batches = list(ids.split(calibration.get("batch_size", 4)))
    acc = importance.accumulate(model, batches)
    tensors = {metric: acc.mean(metric).contiguous() for metric in importance.METRICS}
    with atomic_path(out_path) as tmp:
        save_file(tensors, tmp, metadata={"tokens": str(acc.tokens), "sequences": str(acc.sequences)})
    write_provenance(
        Path(out_path).parent,
        config={"calibration": calibration, "run": run},
        seed=calibration["seed"],
        device=device,
        started=started,
        step="similarity",
    )


def importance_step(
    pairs_path: str | Path, metric: str, csv_path: str | Path, png_path: str | Path, title: str
) -> pd.DataFrame:
    if metric not in importance.METRICS:
        raise ValueError(f"importance metric {metric!r} is unknown; allowed: {', '.join(importance.METRICS)}")
    pair_mean = load_file(str(pairs_path))[metric]
    table = importance.window_table(pair_mean.double(), metric)
    importance.write_table(table, csv_path)
    importance.plot_heatmap(table, png_path, title)
    return table


def prune_step(
    scores: str | Path,
    manifest_path: str | Path,
    sparsity: float,
    healing: str,
    method: str,
    plan_path: str | Path,
    seed: int = 0,
) -> dict[str, Any]:
    """The plan of `method` at `sparsity`: from an importance table, or from a search method's layer order."""
    manifest = read_json(manifest_path)
    num_layers = len(manifest["layer_params"])
    if method in ("streamline", "gromov"):
        plan = prune.plan_pruning(pd.read_csv(scores), manifest, sparsity, healing)
    elif method == "last-n":
        plan = prune.plan_pruning(prune.last_n_table(num_layers), manifest, sparsity, healing)
    elif method == "shortgpt":
        plan = prune.plan_from_order(criteria.shortgpt_order(pd.read_csv(scores)), manifest, sparsity, healing)
    elif method == "random":
        plan = prune.plan_from_order(criteria.random_order(num_layers, seed), manifest, sparsity, healing)
    elif method in criteria.SEARCH_METHODS:
        selection = read_json(scores)
        plan = prune.plan_from_order(selection["order"], manifest, sparsity, healing, selection.get("merges"))
    else:
        raise ValueError(f"method {method!r} is unknown; allowed: {', '.join(criteria.METHODS)}")
    plan["method"] = method
    write_json(plan_path, plan)
    return plan


def select_step(
    model_dir: str | Path,
    method: str,
    search: dict[str, Any],
    dataset: str,
    laco: dict[str, Any],
    max_sparsity: float,
    run: dict[str, Any],
    out_path: str | Path,
) -> dict[str, Any]:
    """Run a search method once, up to the largest configured sparsity; plans take prefixes of its order."""
    started = now_iso()
    device, dtype = _runtime(run)
    model, tokenizer = load_model(model_dir, dtype, device)
    manifest = read_json(Path(model_dir) / "manifest.json")
    ids = _token_windows(
        tokenizer,
        dataset,
        data.resolve_mirror(run.get("data_mirror")),
        search["samples"],
        search["seq_len"],
        search["seed"],
    )
    batches = list(ids.split(search["batch_size"]))
    enough = criteria.enough_for_target(
        manifest["layer_params"], manifest["parameters"], prune.check_sparsity(max_sparsity)
    )
    clock = time.perf_counter()
    record: dict[str, Any] = {"method": method, "max_sparsity": max_sparsity}
    if method == "sleb":
        record["order"] = criteria.sleb_order(model, batches, enough)
    elif method == "shortened-ppl":
        record["order"] = criteria.shortened_ppl_order(model, batches)
    elif method == "laco":
        merges = criteria.laco_merges(model, batches, enough, **laco)
        record.update(merges=merges, order=[i for m in merges for i in m["merged"]], laco=laco)
    else:
        raise ValueError(f"method {method!r} is not a search method; allowed: {', '.join(criteria.SEARCH_METHODS)}")
    record["search_seconds"] = time.perf_counter() - clock
    write_provenance(
        Path(out_path).parent,
        config={"search": search, "laco": laco, "run": run},
        seed=search["seed"],
        device=device,
        started=started,
        step=f"select_layers {method}",
        name=f"{method}_provenance.json",
    )
    write_json(out_path, record)
    return record


def replace_step(
    model_dir: str | Path,
    plan_path: str | Path,
    healing: str,
    training: dict[str, Any],
    lora: dict[str, Any],
    run: dict[str, Any],
    marker_path: str | Path,
    curve_path: str | Path,
) -> dict[str, Any]:
    """Heal (replacement, LoRA or LM-loss) and write the checkpoint; `marker_path` (compressed.json) comes last."""
    started = now_iso()
    device, dtype = _runtime(run)
    out_dir = Path(marker_path).parent
    plan = read_json(plan_path)
    if plan["healing"] != healing:
        raise ValueError(f"plan {plan_path} is for healing {plan['healing']!r}, not {healing!r}")
    if healing == "none":  # nothing trains: `training` is empty for this variant
        empty = torch.empty(0, dtype=torch.long)
        stats = run_healing(
            model_dir,
            plan,
            healing,
            empty,
            empty,
            out_dir,
            cfg=TrainConfig(),
            shard_sequences=1,
            device=device,
            compute_dtype=dtype,
        )
    else:
        from transformers import AutoTokenizer

        ids = _token_windows(
            AutoTokenizer.from_pretrained(model_dir),
            training["dataset"],
            data.resolve_mirror(run.get("data_mirror")),
            training["samples"] + training["val_samples"],
            training["seq_len"],
            training["seed"],
        )
        cfg = TrainConfig(
            epochs=training["epochs"],
            batch_size=training["batch_size"],
            lr=training["lr"],
            weight_decay=training["weight_decay"],
            warmup_ratio=training["warmup_ratio"],
            seed=training["seed"],
        )
        stats = run_healing(
            model_dir,
            plan,
            healing,
            ids[: training["samples"]],
            ids[training["samples"] :],
            out_dir,
            cfg=cfg,
            shard_sequences=training["shard_sequences"],
            device=device,
            compute_dtype=dtype,
            scratch_dir=training.get("scratch_dir"),
            lora=lora,
            init_layer=training.get("init_layer", "first"),
        )
    curve = stats.pop("curve", [])
    write_with(
        curve_path,
        lambda tmp: pd.DataFrame(curve, columns=["epoch", "step", "train_loss", "val_loss", "lr"]).to_csv(
            tmp, index=False
        ),
    )
    write_provenance(
        out_dir,
        config={"plan": plan, "training": training, "lora": lora, "run": run},
        seed=training.get("seed"),
        device=device,
        started=started,
        step="replace",
    )
    record = {"plan": plan, "training": stats, "checkpoint": str(out_dir)}
    write_json(marker_path, record)
    return record


def accuracy_step(
    model_dir: str | Path,
    evaluation: dict[str, Any],
    run: dict[str, Any],
    accuracy_path: str | Path,
    samples_dir: str | Path,
) -> dict[str, Any]:
    from streamline import evaluate
    from streamline.stability import example_record

    started = now_iso()
    device, dtype = _runtime(run)
    mirror = data.resolve_mirror(run.get("data_mirror"))
    model, tokenizer = load_model(model_dir, dtype, device)
    tasks = list(evaluation["tasks"])
    limits = {task: evaluation.get("limits", {}).get(task, evaluation.get("limit")) for task in tasks}
    metrics, samples, raw = evaluate.evaluate_tasks(
        model,
        tokenizer,
        tasks,
        limits,
        batch_size=evaluation["batch_size"],
        seed=evaluation["seed"],
        extra_task_dirs=evaluation.get("extra_task_dirs", []),
        mirror=mirror,
        bootstrap_iters=evaluation.get("bootstrap_iters", 1000),
    )
    samples_dir = Path(samples_dir)
    samples_dir.mkdir(parents=True, exist_ok=True)
    for task, records in samples.items():
        evaluate.write_samples(records, samples_dir / f"{task}.jsonl")
        multiple_choice = all("acc" in r and len(r["filtered_resps"]) > 1 for r in records)
        metrics[task]["multiple_choice"] = multiple_choice
        if multiple_choice:
            write_json(samples_dir / f"{task}.choices.json", [example_record(r) for r in records])
    write_json(samples_dir.parent / "lm_eval_results.json", raw)
    write_provenance(
        samples_dir.parent,
        config={"evaluation": evaluation, "run": run},
        seed=evaluation["seed"],
        device=device,
        started=started,
        step="accuracy",
    )
    write_json(accuracy_path, metrics)
    return metrics


def perplexity_step(model_dir: str | Path, settings: dict[str, Any], run: dict[str, Any], out_path: str | Path) -> dict:
    from streamline.perplexity import perplexity

    device, dtype = _runtime(run)
    model, tokenizer = load_model(model_dir, dtype, device)
    text = data.perplexity_text(settings["dataset"], data.resolve_mirror(run.get("data_mirror")))
    result = perplexity(
        model, tokenizer, text, settings["seq_len"], settings["batch_size"], settings.get("max_windows")
    )
    result["dataset"] = settings["dataset"]
    write_json(out_path, result)
    return result


def model_stats_step(model_dir: str | Path, speed: dict[str, Any], run: dict[str, Any], out_path: str | Path) -> dict:
    from streamline.speed import model_stats

    device, dtype = _runtime(run)
    model, _ = load_model(model_dir, dtype, device)
    stats = model_stats(model, model_dir, speed)
    write_json(out_path, stats)
    return stats


def stability_step(dense_samples: str | Path, variant_samples: str | Path, out_path: str | Path) -> dict[str, Any]:
    """Stability per multiple-choice task; tasks without per-choice scores (e.g. lambada) are skipped."""
    from streamline.stability import stability

    result = {}
    for dense_file in sorted(Path(dense_samples).glob("*.choices.json")):
        task = dense_file.name.removesuffix(".choices.json")
        variant_file = Path(variant_samples) / dense_file.name
        if not variant_file.is_file():
            raise FileNotFoundError(f"task {task!r} has no per-example log for the compressed model ({variant_file})")
        result[task] = stability(json.loads(dense_file.read_text()), json.loads(variant_file.read_text()))
    write_json(out_path, result)
    return result
