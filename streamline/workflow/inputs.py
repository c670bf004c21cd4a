"""The files each job reads besides its rule inputs, made inputs of it, so replacing or editing one re-runs exactly
the jobs that read it (Snakemake compares modification times; docs/reliability.md, "No stale result").

Paths as the config gives them (relative ones resolve in the working directory, as the jobs resolve them). A file
that does not exist gives no input: the job that reads it then stops with its own one-line message (a missing
input would instead stop the whole DAG with Snakemake's MissingInputException).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from streamline.acquisition.checkpoint_files import local_checkpoint_files
from streamline.data import dataset_files, resolve_mirror
from streamline.evaluation.harness import PROJECT_TASKS, task_data_files
from streamline.healing.kinds import HEALING_KINDS

MODEL_SOURCE_KEYS = ("hf", "revision", "local", "gguf")  # size_b only sizes cluster jobs


def existing(paths: list[Path]) -> list[str]:
    return [str(p) for p in paths if p.is_file()]


def mirror_of(config: dict[str, Any]) -> Path | None:
    """The data mirror the jobs will read (config data_mirror, else $STREAMLINE_DATA_MIRROR); None for the hub or
    a mirror that does not exist (the job names it)."""
    try:
        return resolve_mirror(config["data_mirror"])
    except FileNotFoundError:
        return None


def model_source(entry: dict[str, Any]) -> dict[str, Any]:
    """The source keys of a model's entry (size_b must not re-trigger acquisition)."""
    return {key: entry[key] for key in MODEL_SOURCE_KEYS if key in entry}


def model_source_files(entry: dict[str, Any]) -> list[str]:
    """The files a `local:` source (or a .gguf path) is read from."""
    if "local" in entry:
        return [str(p) for p in local_checkpoint_files(Path(entry["local"]).expanduser())]
    if "gguf" in entry and str(entry["gguf"]).endswith(".gguf"):
        return existing([Path(entry["gguf"]).expanduser()])
    return []


def calibration_files(config: dict[str, Any]) -> list[str]:
    """What the similarity and select_layers jobs read: calibration.dataset (mirror files or a text file)."""
    return existing(dataset_files(config["calibration"]["dataset"], mirror_of(config)))


def training_files(config: dict[str, Any], healing: str) -> list[str]:
    """What a replace job reads: training.dataset, for a kind that trains (fits included); nothing otherwise."""
    if not HEALING_KINDS[healing].trains:
        return []
    return existing(dataset_files(config["training"]["dataset"], mirror_of(config)))


def perplexity_files(config: dict[str, Any]) -> list[str]:
    return existing(dataset_files(config["perplexity"]["dataset"], mirror_of(config), perplexity=True))


def task_files(config: dict[str, Any]) -> list[str]:
    """What an accuracy job reads: the task definitions (the project's mirror tasks and every extra_task_dirs
    folder: YAML and Python files) and the mirror data files of the configured mirror tasks."""
    folders = [PROJECT_TASKS, *map(Path, config["evaluation"]["extra_task_dirs"])]
    files = []
    for folder in folders:
        if folder.is_dir():
            files += sorted(p for p in folder.rglob("*") if p.suffix in (".yaml", ".yml", ".py") and p.is_file())
    data = task_data_files(folders, list(config["evaluation"]["tasks"]), mirror_of(config))
    return [str(p) for p in files] + existing(data)
