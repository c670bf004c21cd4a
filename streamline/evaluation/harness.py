"""Zero-shot accuracy through lm-evaluation-harness, with per-example logs kept for stability."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from streamline.atomic import write_with
from streamline.notice import native_stderr_to_python_stderr
from streamline.numerics import NonFiniteError, first_nonfinite, require_finite

if TYPE_CHECKING:  # Snakemake's parse reads the task files through this module without the model stack
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

PROJECT_TASKS = Path(__file__).resolve().parents[2] / "tasks" / "mirror"


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


class FunctionTag:
    """A task YAML's `!function module.name`, as written (the harness imports it only when it builds the task)."""

    def __init__(self, target: str, line: int):
        self.target, self.line = target, line


def _task_yaml_loader() -> type:
    """A YAML loader that keeps `!function` tags as FunctionTag and reads every other tag as None."""
    import yaml

    class TaskLoader(yaml.SafeLoader):
        pass

    TaskLoader.add_constructor(
        "!function", lambda loader, node: FunctionTag(str(loader.construct_scalar(node)), node.start_mark.line + 1)
    )
    TaskLoader.add_multi_constructor("", lambda loader, suffix, node: None)
    return TaskLoader


def task_definitions(folders: list[str | Path], tasks: list[str]) -> dict[str, list[tuple[Path, dict[str, Any]]]]:
    """task name -> [(file, parsed YAML)] of the file defining it and every file it includes (nearest first), for
    each of `tasks` defined in `folders`. Files that do not parse are skipped (check_tasks names them)."""
    import yaml

    loader = _task_yaml_loader()
    parsed: dict[Path, dict[str, Any]] = {}
    for folder in map(Path, folders):
        for path in sorted(folder.rglob("*.y*ml")) if folder.is_dir() else ():
            try:
                data = yaml.load(path.read_text(encoding="utf-8"), Loader=loader)
            except (yaml.YAMLError, UnicodeDecodeError, OSError):
                continue
            if isinstance(data, dict):
                parsed[path] = data
    found: dict[str, list[tuple[Path, dict[str, Any]]]] = {}
    for path, data in parsed.items():
        if data.get("task") not in tasks or data["task"] in found:
            continue
        chain, current = [], (path, data)
        while current is not None and len(chain) < 16:
            chain.append(current)
            include = current[1].get("include")
            target = (current[0].parent / include) if isinstance(include, str) else None
            current = (target, parsed[target]) if target in parsed else None
        found[data["task"]] = chain
    return found


def task_data_files(folders: list[str | Path], tasks: list[str], mirror: Path | None) -> list[Path]:
    """The data mirror files the configured mirror tasks read (`dataset_kwargs.data_file`, mirror_data.load)."""
    if mirror is None:
        return []
    files = []
    for chain in task_definitions(folders, tasks).values():
        for _, data in chain:
            kwargs = data.get("dataset_kwargs")
            if isinstance(kwargs, dict) and isinstance(kwargs.get("data_file"), str):
                files.append(Path(mirror) / kwargs["data_file"])
                break
    return sorted(set(files))


def _function_tags(value: Any) -> list[FunctionTag]:
    """Every FunctionTag in a parsed YAML value, however deep."""
    if isinstance(value, FunctionTag):
        return [value]
    items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    return [tag for item in items for tag in _function_tags(item)]


def function_problems(folders: list[str | Path], tasks: list[str]) -> list[str]:
    """One line per `!function module.name` of a configured task (or a file it includes) whose module file is not
    beside the YAML, does not parse or does not define the name (the harness would stop with a long traceback)."""
    import ast

    problems = []
    for task, chain in task_definitions(folders, tasks).items():
        for path, data in chain:
            for tag in _function_tags(data):
                module, _, name = tag.target.rpartition(".")
                source = path.parent / f"{module}.py"
                where = f"evaluation task {task!r}: task file {str(path)!r} line {tag.line}: !function {tag.target}"
                if not module or not source.is_file():
                    problems.append(f"{where} needs {str(source)!r}, which does not exist")
                    continue
                try:
                    tree = ast.parse(source.read_text(encoding="utf-8"), filename=str(source))
                except (SyntaxError, UnicodeDecodeError) as exc:
                    line = getattr(exc, "lineno", None)
                    problems.append(f"{where}: {str(source)!r} line {line} does not parse ({getattr(exc, 'msg', exc)})")
                    continue
                names = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
                names |= {t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets
                          if isinstance(t, ast.Name)}
                names |= {a.asname or a.name.split(".")[0] for n in tree.body
                          if isinstance(n, (ast.Import, ast.ImportFrom)) for a in n.names}
                if name not in names:
                    problems.append(f"{where}: {str(source)!r} defines no {name!r}")
    return problems


def check_tasks(manager, tasks: list[str]) -> None:
    """Every task must be known to the harness; an unknown one is explained by a task YAML that does not parse, and
    a known one's `!function` modules must exist and define their names (function_problems)."""
    include = manager.include_path or []
    include = include if isinstance(include, (list, tuple)) else [include]
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if not unknown:
        problems = function_problems(include, tasks)
        if problems:
            raise ValueError(problems[0])
        return
    broken = yaml_errors(include)
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

    from streamline.evaluation.choice_nll import harness_lm

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
        with native_stderr_to_python_stderr():  # the harness runs `git describe`: its `fatal:` goes to the job log
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
        check_responses(task, result["samples"][task])
        metrics[task] = tidy_metrics(result["results"][task], len(result["samples"][task]))
        samples[task] = result["samples"][task]
        raw[task] = {key: result.get(key) for key in ("results", "configs", "versions", "n-shot", "n-samples")}
        raw[task]["results"] = _finite_stderrs(raw[task]["results"])
        if paths is not None:
            raw[task]["scorer"] = list(paths)
    return metrics, samples, raw


def _finite_stderrs(value: Any) -> Any:
    """The harness's results with each non-finite `..._stderr` number as None (JSON has no NaN; a metric value
    itself is never replaced: tidy_metrics stops on it)."""
    if isinstance(value, dict):
        return {
            key: None if "_stderr" in str(key) and isinstance(item, float) and not math.isfinite(item)
            else _finite_stderrs(item)
            for key, item in value.items()
        }
    return value


def check_responses(task: str, records: list[dict[str, Any]]) -> None:
    """Every number the model answered (log-likelihoods, in `filtered_resps`) must be finite: a NaN log-likelihood
    scores as the first choice and gives chance accuracy with no error. One line naming the first one."""
    for record in records:
        found = first_nonfinite(record.get("filtered_resps"))
        if found:
            where, value = found
            raise NonFiniteError(
                f"evaluation task {task!r} example {record.get('doc_id')}: the model's answer (filtered_resps{where}) is "
                f"{value}, not a finite number (its outputs are NaN/Inf), so its accuracy would be meaningless"
            )


def tidy_metrics(task_result: dict[str, Any], n_examples: int) -> dict[str, Any]:
    """{'acc,none': x, 'acc_stderr,none': s} -> {'acc': {'value': x, 'stderr': s}}; an 'N/A' or non-finite stderr
    -> None; a non-finite metric value stops (NonFiniteError)."""
    out: dict[str, Any] = {"n_examples": n_examples, "metrics": {}}
    for key, value in task_result.items():
        if "," not in key or "_stderr" in key:
            continue
        name, filt = key.split(",", 1)
        stderr = task_result.get(f"{name}_stderr,{filt}")
        stderr = float(stderr) if isinstance(stderr, (int, float)) and math.isfinite(stderr) else None
        require_finite(f"metric {name} ({filt})", float(value))
        out["metrics"][name] = {"value": float(value), "stderr": stderr}
    return out


def write_samples(samples: list[dict[str, Any]], path: str | Path) -> None:
    """Per-example records as JSON lines (the harness's own record, made JSON-safe)."""

    def dump(tmp: Path) -> None:
        with tmp.open("w", encoding="utf-8") as fh:
            for sample in samples:
                fh.write(json.dumps(sample, default=str, ensure_ascii=False, allow_nan=False) + "\n")

    write_with(path, dump)
