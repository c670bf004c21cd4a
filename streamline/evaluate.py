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


def yaml_errors(folders: list[str | Path]) -> list[tuple[Path, str]]:
    """(file, 'line L, column C: problem') for every task YAML in `folders` that does not parse.

    The harness skips such a file with a log line, so its task then looks merely unknown. Tags such as
    `!function` are accepted without being resolved.
    """
    import yaml

    class TagTolerantLoader(yaml.SafeLoader):
        pass

    TagTolerantLoader.add_multi_constructor("", lambda loader, suffix, node: None)
    errors = []
    for folder in map(Path, folders):
        for path in sorted(folder.rglob("*.y*ml")) if folder.is_dir() else ():
            try:
                yaml.load(path.read_text(encoding="utf-8"), Loader=TagTolerantLoader)
            except (yaml.YAMLError, UnicodeDecodeError) as exc:
                mark = getattr(exc, "problem_mark", None)
                where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
                problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
                errors.append((path, where + problem))
    return errors


def check_tasks(manager, tasks: list[str]) -> None:
    """Every task must be known to the harness; an unknown one is explained by a task YAML that does not parse."""
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if not unknown:
        return
    include = manager.include_path or []
    broken = yaml_errors(include if isinstance(include, (list, tuple)) else [include])
    if broken:
        path, problem = next(((p, e) for p, e in broken if p.stem == unknown[0]), broken[0])
        raise ValueError(
            f"evaluation task {unknown[0]!r} is unknown: task file {str(path)!r} does not parse: {problem}"
        )
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
    manager=None,
    lm=None,
    scorer: str = "shared",
) -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]], dict[str, Any]]:
    """Run each task with its own example limit. Returns (metrics per task, samples per task, raw results).
    `manager`: a `task_manager(extra_task_dirs, mirror)` the caller already built (building one takes seconds);
    `lm`: the caller's HFLM over `model` (`choice_nll.harness_lm`, e.g. recording the forward passes), else one
    built with `scorer` (`shared` or `harness`, schema `evaluation.scorer`). Where the HFLM is a shared-context
    scorer, raw results name the path each of a task's loglikelihood calls took (`scorer`)."""
    import lm_eval

    from streamline.choice_nll import harness_lm

    if manager is None:
        manager = task_manager(list(extra_task_dirs), mirror)
    check_tasks(manager, tasks)
    if lm is None:
        lm = harness_lm(model, tokenizer, batch_size, scorer)
    metrics: dict[str, Any] = {}
    samples: dict[str, list[dict[str, Any]]] = {}
    raw: dict[str, Any] = {}
    for task in tasks:
        paths = getattr(lm, "scoring_paths", None)
        if paths is not None:
            paths.clear()
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
        if paths is not None:
            raw[task]["scorer"] = list(paths)
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
