"""Zero-shot accuracy through lm-evaluation-harness, with per-example logs kept for stability."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from streamline.atomic import write_with

PROJECT_TASKS = Path(__file__).resolve().parent.parent / "tasks" / "mirror"


def task_manager(extra_task_dirs: list[str | Path], mirror: Path | None):
    """The harness's TaskManager over its own tasks, the project's mirror tasks and the user's folders."""
    from lm_eval.tasks import TaskManager

    paths = [PROJECT_TASKS, *[Path(p) for p in extra_task_dirs]]
    for path in paths:
        if not Path(path).is_dir():
            raise FileNotFoundError(f"task folder {str(path)!r} (extra_task_dirs) does not exist")
    metadata = {"data_mirror": str(mirror)} if mirror is not None else None
    return TaskManager(include_path=[str(p) for p in paths], metadata=metadata)


def check_tasks(manager, tasks: list[str]) -> None:
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        mirror = sorted(p.stem for p in PROJECT_TASKS.glob("*.yaml") if not p.stem.startswith("_"))
        raise ValueError(
            f"evaluation task {unknown[0]!r} is unknown; mirror tasks: {', '.join(mirror)}, or any lm-eval task"
        )


def evaluate_tasks(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    tasks: list[str],
    limits: dict[str, int | None],
    *,
    batch_size: int,
    seed: int,
    extra_task_dirs: list[str | Path] = (),
    mirror: Path | None = None,
    bootstrap_iters: int = 1000,
) -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]], dict[str, Any]]:
    """Run each task with its own example limit. Returns (metrics per task, samples per task, raw results)."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    manager = task_manager(list(extra_task_dirs), mirror)
    check_tasks(manager, tasks)
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    metrics: dict[str, Any] = {}
    samples: dict[str, list[dict[str, Any]]] = {}
    raw: dict[str, Any] = {}
    for task in tasks:
        result = lm_eval.simple_evaluate(
            model=lm,
            tasks=[task],
            limit=limits.get(task),
            log_samples=True,
            task_manager=manager,
            bootstrap_iters=bootstrap_iters,
            random_seed=seed,
            numpy_random_seed=seed,
            torch_random_seed=seed,
            fewshot_random_seed=seed,
        )
        metrics[task] = tidy_metrics(result["results"][task], len(result["samples"][task]))
        samples[task] = result["samples"][task]
        raw[task] = {key: result.get(key) for key in ("results", "configs", "versions", "n-shot", "n-samples")}
    return metrics, samples, raw


def tidy_metrics(task_result: dict[str, Any], n_examples: int) -> dict[str, Any]:
    """{'acc,none': x, 'acc_stderr,none': s} -> {'acc': {'value': x, 'stderr': s}}; 'N/A' stderr -> None."""
    out: dict[str, Any] = {"n_examples": n_examples, "metrics": {}}
    for key, value in task_result.items():
        if "," not in key or "_stderr" in key:
            continue
        name, filt = key.split(",", 1)
        stderr = task_result.get(f"{name}_stderr,{filt}")
        out["metrics"][name] = {
            "value": float(value),
            "stderr": float(stderr) if isinstance(stderr, (int, float)) else None,
        }
    return out


def write_samples(samples: list[dict[str, Any]], path: str | Path) -> None:
    """Per-example records as JSON lines (the harness's own record, made JSON-safe)."""

    def dump(tmp: Path) -> None:
        with tmp.open("w", encoding="utf-8") as fh:
            for sample in samples:
                fh.write(json.dumps(sample, default=str, ensure_ascii=False) + "\n")

    write_with(path, dump)
