"""provenance.json: what produced an output folder (config hash, versions, commit, seed, device, times)."""

from __future__ import annotations

import hashlib
import json
import subprocess
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from streamline.atomic import write_json
from streamline.models import dtype_name

TRACKED_PACKAGES = ("torch", "transformers", "lm_eval", "snakemake", "safetensors", "huggingface_hub", "peft")


def config_hash(config: Any) -> str:
    """Short stable hash of a JSON-serialisable config (key order does not matter)."""
    blob = json.dumps(config, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_commit(repo_dir: str | Path = ".") -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo_dir, capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def write_provenance(
    folder: str | Path,
    *,
    config: Any,
    seed: int | None,
    device: str,
    started: str,
    step: str,
    name: str = "provenance.json",
    dtype: torch.dtype | str | None = None,
) -> dict[str, Any]:
    """Write `folder/name` (default provenance.json) and return what was written.

    `dtype` is the compute dtype the step resolved (`dtype: auto` depends on the hardware, so it is recorded).
    """
    record = {
        "step": step,
        "config_hash": config_hash(config),
        "config": config,
        "seed": seed,
        "device": device,
        "dtype": dtype_name(dtype) if isinstance(dtype, torch.dtype) else dtype,
        "packages": package_versions(),
        "git_commit": git_commit(Path(__file__).resolve().parent),
        "started": started,
        "finished": now_iso(),
    }
    write_json(Path(folder) / name, record)
    return record
