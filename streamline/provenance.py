"""provenance.json: what produced an output folder (config hash, versions, commit, seed, device, times)."""

from __future__ import annotations

import hashlib
import json
import subprocess
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from streamline.atomic import write_json

if TYPE_CHECKING:  # every job writes provenance, the light ones without torch
    import torch

TRACKED_PACKAGES = ("torch", "transformers", "lm_eval", "snakemake", "safetensors", "huggingface_hub", "peft")


def dtype_name(dtype: torch.dtype | str) -> str:
    """torch.bfloat16 (or 'bfloat16') -> 'bfloat16', the spelling of the config and of every record this project
    writes."""
    return str(dtype).removeprefix("torch.")


def config_hash(config: Any) -> str:
    """Short stable hash of a JSON-serialisable config (key order does not matter)."""
    blob = json.dumps(config, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


KEY_HEX = 8  # hex digits of a settings key (results/.../{key}/ folders)


def settings_key(settings: Any) -> str:
    """The folder key of the work `settings` produce: 8 hex digits of the sha256 of their canonical JSON.

    Canonical: keys sorted, no spaces, non-JSON values (paths) as str. Equal settings give the same key in every
    experiment, so their work is shared; any difference gives another folder, so nothing is overwritten.
    """
    blob = json.dumps(settings, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:KEY_HEX]


def write_settings(folder: str | Path, settings: Any) -> Path:
    """`folder/settings.json`: the key and the settings it hashes, so a reader can tell key folders apart."""
    path = Path(folder) / "settings.json"
    write_json(path, {"key": settings_key(settings), "settings": settings})
    return path


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
        "dtype": None if dtype is None else dtype_name(dtype),
        "packages": package_versions(),
        "git_commit": git_commit(Path(__file__).resolve().parent),
        "started": started,
        "finished": now_iso(),
    }
    write_json(Path(folder) / name, record)
    return record
