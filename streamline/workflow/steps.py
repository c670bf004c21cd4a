"""One function per workflow step that loads a model (acquisition, similarity, search, healing, evaluation): paths
and plain settings in, files out (with provenance). The steps that load no model are record_steps.py's, so their
jobs skip this module's imports (torch, transformers, the healing stack).

The workflow scripts only unpack `snakemake.input/params/output` and call one of these by keyword; tests call
them directly. Settings arrive as whole config sections with the schema's defaults filled (the workflow validates
the config; code that builds a section by hand starts from `config_schema.defaults(section)`), so no default is
repeated here. `run` settings are {"dtype", "device", "data_mirror"} as in the config. Criteria and healing kinds
are looked up in their registries (criteria.CRITERIA, healing_kinds.HEALING_KINDS).
"""

from __future__ import annotations

import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from safetensors.torch import save_file

from streamline import data, token_windows
from streamline.acquisition.checkpoint_files import checkpoint_parameters
from streamline.acquisition.models import compute_dtype, load_model, nonfinite_weights, resolve_device
from streamline.atomic import atomic_path, read_json, write_json, write_with
from streamline.healing import kinds as healing_kinds
from streamline.healing import recipes
from streamline.healing.heal import heal
from streamline.healing.job import Caches, HealingJob, Runtime
from streamline.importance import scores as importance
from streamline.numerics import NonFiniteError, nonfinite_cause, require_finite
from streamline.provenance import dtype_name, now_iso, write_provenance
from streamline.pruning import criteria
from streamline.pruning import plans as prune


def _runtime(run: dict[str, Any]) -> tuple[str, torch.dtype]:
    device = resolve_device(run["device"])
    return device, compute_dtype(run["dtype"], device)


def _token_windows(tokenizer, dataset: str, mirror: Path | None, samples: int, seq_len: int, seed: int) -> torch.Tensor:
    return token_windows.sample_windows(tokenizer, data.calibration_text(dataset, mirror), samples, seq_len, seed)


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
    require_finite("the pair similarities", tensors, nonfinite_cause(dtype))
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
    found = criteria.check_search_record(criterion, criterion.layers(model, batches, enough, settings),
                                         len(manifest["layer_params"]))
    record.update(found)
    record["search_seconds"] = time.perf_counter() - clock
    require_finite(f"the {method} search's record", record, nonfinite_cause(dtype))
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
    """Heal (replacement, LoRA, LM-loss, a fit) and write the checkpoint; `marker_path` (compressed.json) comes last.

    `training` / `lora`: what the kind's registry entry says reaches it (healing_kinds.HealingKind.settings): empty
    for a kind that does not train; `training.init_layer` only where the kind's start layer follows it;
    `training.recipe` only where it is not the default and the kind has an official recipe (recipes.py).
    `pair_cache`: folder of hidden-state pairs shared by the replacements of one model (pair_cache.py), or None.
    """
    started = now_iso()
    device, dtype = _runtime(run)
    out_dir = Path(marker_path).parent
    plan = read_json(plan_path)
    if plan["healing"] != healing:
        raise ValueError(f"plan {plan_path} is for healing {plan['healing']!r}, not {healing!r}")
    kind = healing_kinds.get(healing)
    job = HealingJob(kind, plan, Path(model_dir), out_dir, runtime=Runtime(device, dtype))
    data_split = None  # tokens and windows of the training and validation parts, when something trains
    if kind.trains is not None:  # else nothing trains: `training` is empty for this variant
        from transformers import AutoTokenizer

        windows = recipes.windows(kind.official, training)  # a fit's official calibration size, where it applies
        text = data.calibration_text(windows.dataset, data.resolve_mirror(run["data_mirror"]))
        ids = token_windows.token_ids(AutoTokenizer.from_pretrained(model_dir), text)
        samples = windows.count(ids.numel(), training["val_samples"])
        split = token_windows.split_windows(ids, samples, training["val_samples"], windows.seq_len, training["seed"])
        data_split = {"dataset": windows.dataset, **split["record"]}
        job = replace(
            job,
            train_ids=split["train"],
            val_ids=split["val"],
            cfg=recipes.train_config(kind.official, training, fit=kind.trains == "fit"),
            lora=lora,
            init_layer=training.get("init_layer"),  # present only where the kind's registry entry uses it
            caches=Caches(pair_cache, training["scratch_dir"], training["shard_sequences"]),
        )
    stats = heal(job)
    if kind.trains is not None and kind.official is not None:  # the recipe it ran under (its key's, or the default)
        stats["recipe"] = training.get("recipe", recipes.DEFAULT_RECIPE)
    _check_healed(out_dir, Path(model_dir), plan, stats)
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


def _check_healed(out_dir: Path, model_dir: Path, plan: dict[str, Any], stats: dict[str, Any]) -> None:
    """Before the marker: the healed checkpoint holds what its plan claims (plans.check_checkpoint_matches_plan),
    its training losses and statistics are finite numbers, and so is every weight it stores (a diverged training
    or a singular fit would otherwise give a checkpoint that scores at chance)."""
    prune.check_checkpoint_matches_plan(out_dir, plan, read_json(model_dir / "manifest.json"),
                                        checkpoint_parameters(model_dir))
    for row in stats.get("curve", []):
        for key in ("train_loss", "val_loss"):
            value = row.get(key)
            if (key == "val_loss" or row.get("step")) and value is not None and not math.isfinite(value):
                raise NonFiniteError(
                    f"healing {plan['healing']!r}: {key} at epoch {row.get('epoch')} (step {row.get('step')}) is "
                    f"{value}, not a finite number; the training diverged: lower training.lr"
                )
    require_finite(f"healing {plan['healing']!r} statistics", {k: v for k, v in stats.items() if k != "curve"})
    bad = nonfinite_weights(out_dir)
    if bad:
        raise NonFiniteError(f"healing {plan['healing']!r} wrote a non-finite weight: {bad}; lower training.lr")


def accuracy_step(
    *,
    model_dir: str | Path,
    evaluation: dict[str, Any],
    run: dict[str, Any],
    accuracy_path: str | Path,
    samples_dir: str | Path,
) -> dict[str, Any]:
    """Harness accuracy per task; for multiple-choice tasks also every choice's PPL score (per-token NLL of
    context + choice, `streamline.evaluation.choice_nll`), the paper's decision rule as `acc_ppl`, the mean
    log-probability of the gold choice on that scale (`gold_logprob`, evaluation/choice_metrics.py), and the
    per-example records stability and the paired intervals need (`samples/{task}.choices.json`)."""
    from streamline.evaluation import choice_nll
    from streamline.evaluation import harness as evaluate

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
            choices, scores = choice_nll.task_ppl_records(
                model,
                lm,
                choice_nll.load_task(manager, task),
                records,
                batch_size=evaluation["batch_size"],
                captured=captured,
            )
            metrics[task]["metrics"].update(scores)  # acc_ppl, gold_logprob
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
    from streamline.evaluation.perplexity import perplexity

    device, dtype = _runtime(run)
    model, tokenizer = load_model(model_dir, dtype, device)
    text = data.perplexity_text(settings["dataset"], data.resolve_mirror(run["data_mirror"]))
    result = perplexity(model, tokenizer, text, settings["seq_len"], settings["batch_size"], settings["max_windows"])
    require_finite("the perplexity result", result, nonfinite_cause(dtype))
    result["dataset"] = settings["dataset"]
    result["dtype"] = dtype_name(dtype)
    write_json(out_path, result)
    return result


def model_stats_step(
    *, model_dir: str | Path, speed: dict[str, Any], run: dict[str, Any], out_path: str | Path
) -> dict[str, Any]:
    from streamline.evaluation.speed import model_stats

    device, dtype = _runtime(run)
    model, _ = load_model(model_dir, dtype, device)
    stats = model_stats(model, model_dir, speed)
    write_json(out_path, stats)
    return stats


def acquire_step(
    *, name: str, source: dict[str, Any], dtype: str, folder: str | Path, seq_lens: dict[str, int]
) -> dict[str, Any]:
    """Acquire model `name` from its `source` into `folder` (checkpoint + manifest.json, saved in `dtype`); warn for
    each of the configured `seq_lens` (config key -> tokens) beyond its position range, unless a `local:` source's
    config.json was already checked before any job ran."""
    from streamline.acquisition.models import acquire_model
    from streamline.notice import warn
    from streamline.workflow.checks import seq_len_warnings

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
