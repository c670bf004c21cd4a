"""One function per workflow step: paths and plain settings in, files out (with provenance).

The workflow scripts only unpack `snakemake.input/params/output` and call one of these by keyword; tests call
them directly. Settings arrive as whole config sections with the schema's defaults filled (the workflow validates
the config; code that builds a section by hand starts from `config_schema.defaults(section)`), so no default is
repeated here. `run` settings are {"dtype", "device", "data_mirror"} as in the config. Criteria and healing kinds
are looked up in their registries (criteria.CRITERIA, healing_kinds.HEALING_KINDS).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from safetensors.torch import load_file, save_file

from streamline import criteria, data, healing_kinds, importance, prune
from streamline.atomic import atomic_path, read_json, write_json, write_with
from streamline.healing import run_healing
from streamline.models import compute_dtype, dtype_name, load_model, resolve_device
from streamline.provenance import now_iso, write_provenance
from streamline.training import TrainConfig


def _runtime(run: dict[str, Any]) -> tuple[str, torch.dtype]:
    device = resolve_device(run["device"])
    return device, compute_dtype(run["dtype"], device)


def _token_windows(tokenizer, dataset: str, mirror: Path | None, samples: int, seq_len: int, seed: int) -> torch.Tensor:
    return data.sample_windows(tokenizer, data.calibration_text(dataset, mirror), samples, seq_len, seed)


def similarity_step(
    *, model_dir: str | Path, out_path: str | Path, calibration: dict[str, Any], run: dict[str, Any]
) -> None:
    """One calibration pass over the dense model -> mean pair similarities of every residual state."""
    started = now_iso()
    device, dtype = _runtime(run)
    mirror = data.resolve_mirror(run["data_mirror"])
    model, tokenizer = load_model(model_dir, dtype, device)
    ids = _token_windows(
        tokenizer, calibration["dataset"], mirror, calibration["samples"], calibration["seq_len"], calibration["seed"]
    )
    batches = list(ids.split(calibration["batch_size"]))
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
    *, pairs_path: str | Path, metric: str, csv_path: str | Path, png_path: str | Path, title: str
) -> pd.DataFrame:
    if metric not in importance.METRICS:
        raise ValueError(f"importance metric {metric!r} is unknown; allowed: {', '.join(importance.METRICS)}")
    pair_mean = load_file(str(pairs_path))[metric]
    table = importance.window_table(pair_mean.double(), metric)
    importance.write_table(table, csv_path)
    importance.plot_heatmap(table, png_path, title)
    return table


def prune_step(
    *,
    scores: str | Path | None,
    manifest_path: str | Path,
    sparsity: float | None,
    layers: int | None,
    healing: str,
    method: str,
    settings: dict[str, Any],
    sparsity_of: str,
    plan_path: str | Path,
) -> dict[str, Any]:
    """The plan of criterion `method` at `sparsity` or removing exactly `layers` layers (give one).

    `scores`: the importance table the criterion reads (None if it reads none), or a search criterion's order
    (select_step's output). `settings`: the config keys the criterion registered (criteria.settings_of).
    """
    if (sparsity is None) == (layers is None):
        raise ValueError(f"a plan needs exactly one target: sparsity={sparsity}, prune_layers={layers}")
    criterion = criteria.get(method)
    manifest = read_json(manifest_path)
    merges = None
    if criterion.kind == "search":
        selection = read_json(scores)
        if criterion.window:  # ppl-window: a window table found by forward passes
            result = pd.DataFrame(selection["windows"])
        else:
            result, merges = selection["order"], selection.get("merges")
    else:
        if criterion.metric is not None and scores is None:
            raise ValueError(f"method {method!r} reads the {criterion.metric!r} importance table; none was given")
        table = pd.read_csv(scores) if criterion.metric is not None else None
        result = criterion.layers(table, len(manifest["layer_params"]), criteria.check_settings(criterion, settings))
    if criterion.window:
        if layers is None:
            plan = prune.plan_pruning(result, manifest, sparsity, healing, sparsity_of)
        else:
            plan = prune.plan_layers(result, manifest, layers, healing, sparsity_of)
    elif layers is None:
        plan = prune.plan_from_order(result, manifest, sparsity, healing, sparsity_of, merges)
    else:
        plan = prune.plan_order_layers(result, manifest, layers, healing, sparsity_of, merges)
    plan["method"] = method
    write_json(plan_path, plan)
    return plan


def select_step(
    *,
    model_dir: str | Path,
    method: str,
    search: dict[str, Any],
    dataset: str,
    settings: dict[str, Any],
    max_sparsity: float | None,
    max_layers: int | None,
    sparsity_of: str,
    run: dict[str, Any],
    out_path: str | Path,
) -> dict[str, Any]:
    """Run a search criterion once, up to the largest configured sparsity and layer count (either may be None);
    plans take prefixes of its order. `search`: the calibration windows (config `search`); `settings`: the config
    keys the criterion registered (criteria.settings_of), e.g. {"laco": {...}}."""
    criterion = criteria.get(method)
    if criterion.kind != "search":
        searches = ", ".join(name for name, c in criteria.CRITERIA.items() if c.kind == "search")
        raise ValueError(f"method {method!r} is not a search method; allowed: {searches}")
    settings = criteria.check_settings(criterion, settings)
    started = now_iso()
    device, dtype = _runtime(run)
    model, tokenizer = load_model(model_dir, dtype, device)
    manifest = read_json(Path(model_dir) / "manifest.json")
    ids = _token_windows(
        tokenizer,
        dataset,
        data.resolve_mirror(run["data_mirror"]),
        search["samples"],
        search["seq_len"],
        search["seed"],
    )
    batches = list(ids.split(search["batch_size"]))
    enough = criteria.search_enough(manifest, max_sparsity, max_layers, sparsity_of)
    clock = time.perf_counter()
    record: dict[str, Any] = {
        "method": method,
        "max_sparsity": max_sparsity,
        "max_layers": max_layers,
        "sparsity_of": sparsity_of,
    }
    record.update(criterion.layers(model, batches, enough, settings))
    record["search_seconds"] = time.perf_counter() - clock
    write_provenance(
        Path(out_path).parent,
        config={"search": search, **settings, "run": run},
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
    *,
    model_dir: str | Path,
    plan_path: str | Path,
    healing: str,
    training: dict[str, Any],
    lora: dict[str, Any],
    run: dict[str, Any],
    marker_path: str | Path,
    curve_path: str | Path,
    pair_cache: str | Path | None,
) -> dict[str, Any]:
    """Heal (replacement, LoRA or LM-loss) and write the checkpoint; `marker_path` (compressed.json) comes last.

    `training` / `lora`: what the kind's registry entry says reaches it (healing_kinds.HealingKind.settings): empty
    for a kind that does not train; `training.init_layer` only where the kind's start layer follows it.
    `pair_cache`: folder of hidden-state pairs shared by the replacements of one model (pair_cache.py), or None.
    """
    started = now_iso()
    device, dtype = _runtime(run)
    out_dir = Path(marker_path).parent
    plan = read_json(plan_path)
    if plan["healing"] != healing:
        raise ValueError(f"plan {plan_path} is for healing {plan['healing']!r}, not {healing!r}")
    data_split = None  # tokens and windows of the training and validation parts, when something trains
    if healing_kinds.get(healing).trains is None:  # nothing trains: `training` is empty for this variant
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

        text = data.calibration_text(training["dataset"], data.resolve_mirror(run["data_mirror"]))
        split = data.split_windows(
            data.token_ids(AutoTokenizer.from_pretrained(model_dir), text),
            training["samples"],
            training["val_samples"],
            training["seq_len"],
            training["seed"],
        )
        data_split = {"dataset": training["dataset"], **split["record"]}
        if healing_kinds.get(healing).trains == "fit":  # only the data keys reach a fit (FIT_TRAINING_KEYS)
            cfg = TrainConfig(batch_size=training["batch_size"], seed=training["seed"])
        else:
            cfg = TrainConfig.from_settings(training)
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
            scratch_dir=training["scratch_dir"],
            lora=lora,
            init_layer=training.get("init_layer"),  # present only where the kind's registry entry uses it
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
    *,
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
    mirror = data.resolve_mirror(run["data_mirror"])
    model, tokenizer = load_model(model_dir, dtype, device)
    tasks = list(evaluation["tasks"])
    limits = {task: evaluation["limits"].get(task, evaluation["limit"]) for task in tasks}
    manager = evaluate.task_manager(evaluation["extra_task_dirs"], mirror)
    lm = choice_nll.harness_lm(model, tokenizer, evaluation["batch_size"], evaluation["scorer"])
    captured = choice_nll.capture_input_logprobs(lm)  # the scoring forwards give the PPL scores' context part
    metrics, samples, raw = evaluate.evaluate_tasks(
        model,
        tokenizer,
        tasks,
        limits,
        batch_size=evaluation["batch_size"],
        seed=evaluation["seed"],
        extra_task_dirs=evaluation["extra_task_dirs"],
        mirror=mirror,
        bootstrap_iters=evaluation["bootstrap_iters"],
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


def perplexity_step(
    *, model_dir: str | Path, settings: dict[str, Any], run: dict[str, Any], out_path: str | Path
) -> dict[str, Any]:
    from streamline.perplexity import perplexity

    device, dtype = _runtime(run)
    model, tokenizer = load_model(model_dir, dtype, device)
    text = data.perplexity_text(settings["dataset"], data.resolve_mirror(run["data_mirror"]))
    result = perplexity(model, tokenizer, text, settings["seq_len"], settings["batch_size"], settings["max_windows"])
    result["dataset"] = settings["dataset"]
    result["dtype"] = dtype_name(dtype)
    write_json(out_path, result)
    return result


def model_stats_step(
    *, model_dir: str | Path, speed: dict[str, Any], run: dict[str, Any], out_path: str | Path
) -> dict[str, Any]:
    from streamline.speed import model_stats

    device, dtype = _runtime(run)
    model, _ = load_model(model_dir, dtype, device)
    stats = model_stats(model, model_dir, speed)
    write_json(out_path, stats)
    return stats


def stability_step(
    *, dense_samples: str | Path, variant_samples: str | Path, out_path: str | Path, correctness: str
) -> dict[str, Any]:
    """Stability per multiple-choice task; tasks without per-choice scores (e.g. lambada) are skipped.
    `correctness` (config evaluation.stability_correctness): `acc_ppl` (the paper) or `acc` decides right/wrong."""
    from streamline.stability import stability

    result = {}
    for dense_file in sorted(Path(dense_samples).glob("*.choices.json")):
        task = dense_file.name.removesuffix(".choices.json")
        variant_file = Path(variant_samples) / dense_file.name
        if not variant_file.is_file():
            raise FileNotFoundError(f"task {task!r} has no per-example log for the compressed model ({variant_file})")
        result[task] = stability(json.loads(dense_file.read_text()), json.loads(variant_file.read_text()), correctness)
    write_json(out_path, result)
    return result


def acquire_step(
    *, name: str, source: dict[str, Any], dtype: str, folder: str | Path, seq_lens: dict[str, int]
) -> dict[str, Any]:
    """Acquire model `name` from its `source` into `folder` (checkpoint + manifest.json, saved in `dtype`); warn for
    each of the configured `seq_lens` (config key -> tokens) beyond its position range, unless a `local:` source's
    config.json was already checked before any job ran."""
    from streamline.checks import seq_len_warnings, warn
    from streamline.models import acquire_model

    started = now_iso()
    manifest = acquire_model(name, source, Path(folder), dtype)
    write_provenance(
        Path(folder),
        config={"source": source, "dtype": dtype},
        seed=None,
        device="cpu",
        started=started,
        step="acquire_model",
    )
    if "local" not in source:
        for line in seq_len_warnings(name, manifest.get("max_position_embeddings"), seq_lens):
            warn(line)
    return manifest


def aggregate_step(
    *,
    entries: list[dict[str, Any]],
    manifests: list[str],
    table_path: str | Path,
    config_hash: str,
    seed: int,
    experiment: str,
) -> pd.DataFrame:
    """The experiment's all.csv from each of its variants' files (report.build_all_table)."""
    from streamline.report import build_all_table

    return build_all_table(entries, manifests, table_path, config_hash, seed, experiment)


def tables_step(*, all_csv: str | Path, main_md: str | Path, main_tex: str | Path, stability_md: str | Path) -> None:
    """The paper-style tables from all.csv (tables.write_tables)."""
    from streamline.tables import write_tables

    write_tables(all_csv, main_md, main_tex, stability_md)


def plot_step(*, figure: str, all_csv: str | Path, png: str | Path, pdf: str | Path, dpi: int) -> None:
    """One figure from all.csv: accuracy, relative_accuracy, stability, perplexity (vs sparsity) or healing_cost."""
    from streamline import plots

    figures = {
        "accuracy": lambda: plots.accuracy_vs_sparsity(all_csv, png, pdf, relative=False, dpi=dpi),
        "relative_accuracy": lambda: plots.accuracy_vs_sparsity(all_csv, png, pdf, relative=True, dpi=dpi),
        "stability": lambda: plots.stability_vs_sparsity(all_csv, png, pdf, dpi=dpi),
        "perplexity": lambda: plots.perplexity_vs_sparsity(all_csv, png, pdf, dpi=dpi),
        "healing_cost": lambda: plots.healing_cost(all_csv, png, pdf, dpi=dpi),
    }
    if figure not in figures:
        raise ValueError(f"figure {figure!r} is unknown; allowed: {', '.join(figures)}")
    figures[figure]()


def importance_plot_step(
    *, scores_csv: str | Path, plans: list[str], png: str | Path, pdf: str | Path, model: str, dpi: int
) -> None:
    """The importance heatmap of `model` with each window plan's removed window marked."""
    from streamline.plots import importance_with_windows

    importance_with_windows(scores_csv, plans, png, pdf, model, dpi=dpi)
