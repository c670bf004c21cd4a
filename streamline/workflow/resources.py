"""Cluster resources of the model-running jobs, derived from the model's size (README: "Run on a cluster")."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from streamline.acquisition.checkpoint_files import checkpoint_parameters

BYTES_PER_PARAM = {"float32": 4, "bfloat16": 2, "float16": 2}


def checkpoint_size_b(manifest: str | Path, entry: dict[str, Any]) -> float | None:
    """Billions of parameters of an acquired model (its `manifest`) or of a `local:` source's checkpoint (safetensors
    headers, no tensor read); None when neither is known yet."""
    manifest = Path(manifest)
    if manifest.is_file():
        try:
            return json.loads(manifest.read_text())["parameters"] / 1e9
        except (OSError, ValueError, KeyError):
            pass
    if "local" in entry:
        params = checkpoint_parameters(Path(entry["local"]).expanduser())
        return params / 1e9 if params else None
    return None


def model_size_b(entry: dict[str, Any], counted: float | None) -> float:
    """Billions of parameters: the entry's size_b, else `counted` (checkpoint_size_b), else 1."""
    if "size_b" in entry:
        return float(entry["size_b"])
    return counted or 1.0


def heavy_gpus(size_b: float, resources: dict[str, Any]) -> int:
    """GPUs for one model in bf16 plus 30% for activations and caches; 0 when the rule runs on CPU."""
    mode = resources["gpu"]
    if mode is False or (mode == "auto" and size_b < 1.0):
        return 0
    return max(1, math.ceil(size_b * 2 * 1.3 / resources["gpu_mem_gb"]))


def heavy_mem_mb(size_b: float, checkpoint_dtype: str) -> int:
    """Host RAM: one copy of the checkpoint in its saved dtype plus 30%, plus 4 GB for the runtime."""
    return math.ceil((size_b * BYTES_PER_PARAM[checkpoint_dtype] * 1.3 + 4) * 1024)


def heavy_runtime(size_b: float, resources: dict[str, Any]) -> int:
    """Minutes: 30 plus resources.runtime_min_per_b per billion parameters."""
    return int(30 + resources["runtime_min_per_b"] * size_b)
