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
        dtype=dtype,
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
    sparsity: float | None,
    healing: str,
    method: str,
    plan_path: str | Path,
    seed: int = 0,
    layers: int | None = None,
    sparsity_of: str = "layers",
) -> dict[str, Any]:
    """The plan of `method` at `sparsity` or removing exactly `layers` layers (give one; `sparsity_of` is the
    schema's default), from an importance table or from a search method's layer order."""
    if (sparsity is None) == (layers is None):
        raise ValueError(f"a plan needs exactly one target: sparsity={sparsity}, prune_layers={layers}")
    manifest = read_json(manifest_path)
    num_layers = len(manifest["layer_params"])
    if method in criteria.WINDOW_METHODS:
        table = prune.last_n_table(num_layers) if method == "last-n" else pd.read_csv(scores)
        if layers is None:
            plan = prune.plan_pruning(table, manifest, sparsity, healing, sparsity_of)
        else:
            plan = prune.plan_layers(table, manifest, layers, healing, sparsity_of)
    else:
        merges = None
        if method == "shortgpt":
            order = criteria.shortgpt_order(pd.read_csv(scores))
        elif method == "random":
            order = criteria.random_order(num_layers, seed)
        elif method in criteria.SEARCH_METHODS:
            selection = read_json(scores)
            order, merges = selection["order"], selection.get("merges")
        else:
            raise ValueError(f"method {method!r} is unknown; allowed: {', '.join(criteria.METHODS)}")
        if layers is None:
            plan = prune.plan_from_order(order, manifest, sparsity, healing, sparsity_of, merges)
        else:
            plan = prune.plan_order_layers(order, manifest, layers, healing, sparsity_of, merges)
    plan["method"] = method
    write_json(plan_path, plan)
    return plan


def select_step(
    model_dir: str | Path,
    method: str,
    search: dict[str, Any],
    dataset: str,
    laco: dict[str, Any],
    max_sparsity: float | None,
    run: dict[str, Any],
    out_path: str | Path,
    max_layers: int | None = None,
    sparsity_of: str = "layers",
) -> dict[str, Any]:
    """Run a search method once, up to the largest configured sparsity and layer count (either may be None);
    plans take prefixes of its order."""
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
    enough = prune.search_enough(manifest, max_sparsity, max_layers, sparsity_of)
    clock = time.perf_counter()
    record: dict[str, Any] = {
        "method": method,
        "max_sparsity": max_sparsity,
        "max_layers": max_layers,
        "sparsity_of": sparsity_of,
    }
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
        dtype=dtype,
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
    pair_cache: str | Path | None = None,
) -> dict[str, Any]:
    """Heal (replacement, LoRA or LM-loss) and write the checkpoint; `marker_path` (compressed.json) comes last.

    `pair_cache`: folder of hidden-state pairs shared by the replacements of one model (pair_cache.py).
    """
    started = now_iso()
    device, dtype = _runtime(run)
    out_dir = Path(marker_path).parent
    plan = read_json(plan_path)
    if plan["healing"] != healing:
        raise ValueError(f"plan {plan_path} is for healing {plan['healing']!r}, not {healing!r}")
    data_split = None  # tokens and windows of the training and validation parts, when something trains
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

        text = data.calibration_text(training["dataset"], data.resolve_mirror(run.get("data_mirror")))
        split = data.split_windows(
            data.token_ids(AutoTokenizer.from_pretrained(model_dir), text),
            training["samples"],
            training["val_samples"],
            training["seq_len"],
            training["seed"],
        )
        data_split = {"dataset": training["dataset"], **split["record"]}
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
            split["train"],
            split["val"],
            out_dir,
            cfg=cfg,
            shard_sequences=training["shard_sequences"],
            device=device,
            compute_dtype=dtype,
            scratch_dir=training.get("scratch_dir"),
            lora=lora,
            init_layer=training.get("init_layer", "first"),
            pair_cache=pair_cache,
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
        dtype=dtype,
        started=started,
        step="replace",
    )
    record = {"plan": plan, "training": stats, "data_split": data_split, "checkpoint": str(out_dir)}
    write_json(marker_path, record)
    return record


def accuracy_step(
    model_dir: str | Path,
    evaluation: dict[str, Any],
    run: dict[str, Any],
    accuracy_path: str | Path,
    samples_dir: str | Path,
) -> dict[str, Any]:
    """Harness accuracy per task; for multiple-choice tasks also every choice's PPL score (per-token NLL of
    context + choice, `streamline.choice_nll`), the paper's decision rule as `acc_ppl`, and the per-example records
    stability needs (`samples/{task}.choices.json`)."""
    from streamline import choice_nll, evaluate

    started = now_iso()
    device, dtype = _runtime(run)
    mirror = data.resolve_mirror(run.get("data_mirror"))
    model, tokenizer = load_model(model_dir, dtype, device)
    tasks = list(evaluation["tasks"])
    limits = {task: evaluation.get("limits", {}).get(task, evaluation.get("limit")) for task in tasks}
    manager = evaluate.task_manager(evaluation.get("extra_task_dirs", []), mirror)
    lm = choice_nll.harness_lm(model, tokenizer, evaluation["batch_size"])
    captured = choice_nll.capture_input_logprobs(lm)  # the harness's forwards give the PPL scores' context part
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
        manager=manager,
        lm=lm,
    )
    samples_dir = Path(samples_dir)
    samples_dir.mkdir(parents=True, exist_ok=True)
    for task, records in samples.items():
        evaluate.write_samples(records, samples_dir / f"{task}.jsonl")
        multiple_choice = all("acc" in r and len(r["filtered_resps"]) > 1 for r in records)
        metrics[task]["multiple_choice"] = multiple_choice
        if multiple_choice:
            choices, acc_ppl = choice_nll.task_ppl_records(
                model,
                lm,
                choice_nll.load_task(manager, task),
                records,
                batch_size=evaluation["batch_size"],
                captured=captured,
            )
            if acc_ppl is not None:
                metrics[task]["metrics"]["acc_ppl"] = acc_ppl
            write_json(samples_dir / f"{task}.choices.json", choices)
    write_json(samples_dir.parent / "lm_eval_results.json", raw)
    write_provenance(
        samples_dir.parent,
        config={"evaluation": evaluation, "run": run},
        seed=evaluation["seed"],
        device=device,
        dtype=dtype,
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
    result["dtype"] = str(dtype).removeprefix("torch.")
    write_json(out_path, result)
    return result


def model_stats_step(model_dir: str | Path, speed: dict[str, Any], run: dict[str, Any], out_path: str | Path) -> dict:
    from streamline.speed import model_stats

    device, dtype = _runtime(run)
    model, _ = load_model(model_dir, dtype, device)
    stats = model_stats(model, model_dir, speed)
    write_json(out_path, stats)
    return stats


def stability_step(
    dense_samples: str | Path, variant_samples: str | Path, out_path: str | Path, correctness: str | None = None
) -> dict[str, Any]:
    """Stability per multiple-choice task; tasks without per-choice scores (e.g. lambada) are skipped.
    `correctness` (config evaluation.stability_correctness): `acc_ppl` (the paper, the default) or `acc` decides
    right/wrong."""
    from streamline.stability import CORRECTNESS, stability

    correctness = correctness or CORRECTNESS[0]

    result = {}
    for dense_file in sorted(Path(dense_samples).glob("*.choices.json")):
        task = dense_file.name.removesuffix(".choices.json")
        variant_file = Path(variant_samples) / dense_file.name
        if not variant_file.is_file():
            raise FileNotFoundError(f"task {task!r} has no per-example log for the compressed model ({variant_file})")
        result[task] = stability(json.loads(dense_file.read_text()), json.loads(variant_file.read_text()), correctness)
    write_json(out_path, result)
    return result
