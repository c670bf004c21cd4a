"""Config checks before any job runs: contradictions stop the run with one line, questionable values warn.

`ConfigError` is the one line `config error at KEY: ...` (rules/common.smk turns it into the exit message). The
warning functions return the warning text (or a list of lines), so the workflow (at DAG time) and the library (at
run time) word a problem the same way; `streamline.notice.warn` emits one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from streamline.healing.kinds import HEALING_KINDS, requested_kinds
from streamline.pruning.criteria import CRITERIA

MODEL_SOURCES = ("hf", "local", "gguf")


class ConfigError(ValueError):
    """A config value the workflow cannot run with: `config error at {where}: {problem}`."""

    def __init__(self, where: str, problem: str):
        super().__init__(f"config error at {where}: {problem}")


def config_seq_lens(config: dict[str, Any]) -> dict[str, int]:
    """The sequence lengths the configured jobs run at (config key -> tokens): calibration and perplexity always,
    training when some healing trains, search when a search method is configured."""
    trains = any(HEALING_KINDS[kind].trains for kind in requested_kinds(config["healing"], config["replacements"]))
    seq_lens = {key: config[key.split(".")[0]]["seq_len"] for key in ("calibration.seq_len", "perplexity.seq_len")}
    if trains:
        seq_lens["training.seq_len"] = config["training"]["seq_len"]
    if any(CRITERIA[method].kind == "search" for method in config["methods"]):
        seq_lens["search.seq_len"] = config["search"]["seq_len"]
    return seq_lens


def seq_len_warnings(model: str, max_positions: int | None, seq_lens: dict[str, int]) -> list[str]:
    """One warning per `seq_lens` entry (config key -> tokens) longer than the model's position range."""
    if not max_positions:
        return []
    return [
        f"{key}={value} exceeds the max_position_embeddings={max_positions} of model {model!r}; "
        "positions beyond it are extrapolated and its results are not comparable"
        for key, value in seq_lens.items()
        if value > max_positions
    ]


# --- contradictions (ConfigError) ------------------------------------------------------------------------------
def check_model_sources(models: Any) -> None:
    """A model entry names exactly one source (the schema's oneOf would only say 'not valid under any')."""
    for name, entry in (models.items() if isinstance(models, dict) else ()):
        if not isinstance(entry, dict):
            continue
        sources = [key for key in MODEL_SOURCES if key in entry]
        if len(sources) != 1:
            got = ", ".join(sources) if sources else f"only {', '.join(entry) or 'nothing'}"
            raise ConfigError(f"models.{name}", f"give exactly one of {', '.join(MODEL_SOURCES)} (got {got})")


def check_sparsities(values: list[float], where: str = "sparsities") -> None:
    """Each sparsity must have its own folder name that reads back as the same number (s{tag})."""
    from streamline.workflow.variants import sparsity_tag

    seen: dict[str, float] = {}
    for i, value in enumerate(values):
        tag = sparsity_tag(value)
        if tag in seen:
            raise ConfigError(
                f"{where}[{i}]",
                f"{value!r} and {seen[tag]!r} both give the folder s{tag}; sparsities must differ within 6 "
                "significant digits",
            )
        if "e" in tag or float(tag) != float(value):
            raise ConfigError(
                f"{where}[{i}]",
                f"{value!r} has no exact folder name (s{tag}); use a decimal of at most 6 significant digits, at "
                "least 0.0001",
            )
        seen[tag] = value


def check_training_scales(training: dict[str, Any], scales: list[float] | None = None,
                          where: str = "training.scales") -> None:
    """Each training scale must give a whole number of training sequences (scale x training.samples)."""
    for i, scale in enumerate(training["scales"] if scales is None else scales):
        samples = scale * training["samples"]
        if samples < 1 or abs(samples - round(samples)) > 1e-9:
            raise ConfigError(
                f"{where}[{i}]",
                f"{scale!r} x training.samples {training['samples']} = {samples:g} sequences; a scale must give a "
                "whole number of at least 1",
            )


def check_limits(evaluation: dict[str, Any]) -> None:
    """Every evaluation.limits key must name a configured task (a typo would silently evaluate the full set)."""
    for task in evaluation["limits"]:
        if task not in evaluation["tasks"]:
            raise ConfigError(
                f"evaluation.limits.{task}",
                f"{task!r} names no task in evaluation.tasks ({', '.join(evaluation['tasks'])})",
            )


def check_datasets(config: dict[str, Any], corpora: list[str]) -> None:
    """calibration.dataset and training.dataset: a known corpus (`corpora`) or an existing text file."""
    for key in ("calibration", "training"):
        value = config[key]["dataset"]
        if value not in corpora and not Path(value).expanduser().is_file():
            raise ConfigError(
                f"{key}.dataset",
                f"{value!r} is neither one of {', '.join(sorted(corpora))} nor an existing text file",
            )


def dropped_combinations(grid: dict[str, Any]) -> list[str]:
    """Lines naming the healing kinds of a grid that apply to none of some of its methods (they need a window),
    grouped by those methods."""
    from streamline.workflow.variants import healings_for

    groups: dict[tuple[str, ...], list[str]] = {}
    for kind in requested_kinds(grid["healing"], grid["replacements"]):
        methods = tuple(m for m in grid["methods"] if kind not in healings_for(m, grid))
        if methods:
            groups.setdefault(methods, []).append(kind)
    windows = ", ".join(name for name, criterion in CRITERIA.items() if criterion.window)
    return [
        f"healing {', '.join(kinds)} dropped for {', '.join(methods)}: "
        f"{'it applies' if len(kinds) == 1 else 'they apply'} only to window methods ({windows})"
        for methods, kinds in groups.items()
    ]


def check_grids(experiment: Any) -> list[str]:
    """The same rule for the top-level grid and every `ablations` entry: one with no target or no compressed
    variant stops the run (`config error at sparsities`/`healing` for the top level, `ablations[i]` for an
    entry); the healing kinds a grid drops for some of its methods are returned as warnings (an ablation's
    prefixed with its place). `experiment`: a variants.Experiment."""
    from streamline.workflow.variants import target_tags

    config = experiment.config
    warnings = []
    for i, grid in enumerate(experiment.grids()):
        top = i == 0
        where = None if top else f"ablations[{i - 1}]"
        if not top:
            check_sparsities(config["ablations"][i - 1].get("sparsities", []), f"{where}.sparsities")
            check_training_scales(config["training"], config["ablations"][i - 1].get("scales", []), f"{where}.scales")
        if not target_tags(grid):
            problem = "no target: sparsities and prune_layers are both empty; name at least one"
            raise ConfigError(
                "sparsities" if top else where,
                "empty, and prune_layers is empty too; name at least one target" if top else problem,
            )
        lines = dropped_combinations(grid)
        if not experiment.grid_variants(grid):
            raise ConfigError("healing" if top else where, f"no compressed variant is left ({'; '.join(lines)})")
        warnings += lines if top else [f"{where}: {line}" for line in lines]
    return warnings


# --- what results/ holds -----------------------------------------------------------------------------------------
def settings_record_problems(folders: dict[str, tuple[Any, str, list[str]]], root: str | Path = ".") -> list[str]:
    """Warnings for keyed folders whose settings.json was edited by hand or damaged. `folders`: folder -> (the
    settings this config gives it, the output of the job that writes the record, the folders made from it), as
    variants.Experiment.keyed_folders lists them. The record must be `{"key": <the folder's key>, "settings": <those settings>}` as
    provenance.write_settings writes it; a folder or record that does not exist yet is fine (its job writes it)."""
    from streamline.provenance import settings_key

    lines = []
    for folder, (settings, output, _) in folders.items():
        path = Path(root) / folder / "settings.json"
        if not path.is_file():
            continue
        key = settings_key(settings)  # the key in the folder's path
        expected = json.loads(json.dumps({"key": key, "settings": settings}, default=str))
        try:
            found = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            problem = f"does not parse ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
        else:
            if found == expected:
                continue
            named = found.get("key") if isinstance(found, dict) else None
            if named != key:
                problem = f"names the key {named!r}, not the folder's {key!r}"
            else:
                problem = "records other settings than the ones the folder's key stands for"
        lines.append(
            f"{folder}/settings.json {problem}: edited by hand or damaged; the folder's results are those of the "
            f"settings its key hashes (the record only documents them); to rewrite it: snakemake --forcerun "
            f"{output} (re-runs that job and what depends on it)"
        )
    return lines


def deleted_folders(folders: dict[str, tuple[Any, str, list[str]]], root: str | Path = ".") -> list[str]:
    """Warnings for keyed folders of this config that are gone while a folder made from their results is still
    there: deleted by hand. Snakemake rebuilds a missing file only when a job that must run needs it, so until then
    the results made from it stay as they are; the warning says how to rebuild it now. `folders` as for
    settings_record_problems."""
    lines = []
    for folder, (_, output, dependants) in folders.items():
        if (Path(root) / folder).exists():
            continue
        made = next((d for d in dependants if (Path(root) / d).exists()), None)
        if made:
            lines.append(
                f"keyed folder {folder} is missing (deleted?) but {made} was made from it; both stay as they are until "
                f"a job needs it; to rebuild it and re-run what was made from it: snakemake --forcerun {output}"
            )
    return lines
