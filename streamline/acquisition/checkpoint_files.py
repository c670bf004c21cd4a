"""A checkpoint folder on disk, read without loading a model: its files, content hash, stored parameters (from the
safetensors headers), damage, and the marker of a folder the workflow wrote.

Nothing here imports torch or transformers: Snakemake's parse (rules/common.smk, workflow/inputs.py,
workflow/resources.py) and the plan arithmetic (pruning/plans.py) read checkpoints through this module, so a dry
run and a light job pay no model stack's imports. Headers are read with `safe_open(framework="numpy")`, which reads
no tensor and imports no torch.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open

# The modules a compressed checkpoint may store beside its stock weights (checkpoint.py defines and loads them),
# each in its own file, listed with its position in EXTRAS_FILE.
EXTRA_NAMES = ("linear", "ffn")
EXTRA_FILES = {kind: f"streamline_{kind}.safetensors" for kind in EXTRA_NAMES}
EXTRAS_FILE = "streamline_extras.json"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# Files of a checkpoint folder that define the model: config, weights (and their shard index), tokenizer.
CHECKPOINT_PATTERNS = ("*.json", "*.safetensors", "*.bin", "*.model", "*.txt", "*.tiktoken")
# The content hash of a local source covers what decides the numbers: the config and the weights.
HASHED_PATTERNS = ("config.json", "*.safetensors", "*.bin")


def local_checkpoint_files(folder: Path) -> list[Path]:
    """The files a checkpoint folder is loaded from (top level, sorted); empty when it has no config.json."""
    if not (folder / "config.json").is_file():
        return []
    found = {p for pattern in CHECKPOINT_PATTERNS for p in folder.glob(pattern) if p.is_file()}
    return sorted(p for p in found if not p.name.startswith("."))


def content_hash(folder: Path) -> dict[str, Any]:
    """sha256 over config.json and the weight files of a checkpoint folder (name and bytes, in name order)."""
    files = sorted({p for pattern in HASHED_PATTERNS for p in folder.glob(pattern) if p.is_file()})
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode() + b"\0" + sha256_file(path).encode())
    return {"sha256": digest.hexdigest(), "files": [p.name for p in files]}


def _safetensors_shapes(shard: Path) -> list[list[int]]:
    """The shape of every tensor in a safetensors file, read by `safe_open` from its header (no tensor is read);
    safetensors refuses a header that is invalid or a file shorter than its header says (SafetensorError)."""
    with safe_open(str(shard), framework="numpy") as fh:
        return [fh.get_slice(key).get_shape() for key in fh.keys()]  # noqa: SIM118 - safe_open is not a mapping


def checkpoint_parameters(folder: Path) -> int | None:
    """Parameters stored in a checkpoint folder, from the safetensors headers (no tensor is read);
    for .bin weights, their bytes over the config's dtype width. None when the folder holds no weights."""
    total = 0
    shards = sorted(folder.glob("*.safetensors"))
    for shard in shards:
        try:
            total += sum(math.prod(shape) for shape in _safetensors_shapes(shard))
        except (OSError, SafetensorError):
            return None
    if shards:
        return total
    bins = sorted(folder.glob("*.bin"))
    if not bins:
        return None
    try:
        cfg = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        cfg = {}
    width = {"float32": 4, "bfloat16": 2, "float16": 2}.get(cfg.get("dtype") or cfg.get("torch_dtype"), 4)
    return sum(p.stat().st_size for p in bins) // width


def checkpoint_damage(folder: Path) -> str | None:
    """What is missing or cut short in a checkpoint folder (file names relative to it), judged from file sizes
    and safetensors headers only (no tensor is read); None when it looks whole."""
    if not (folder / "config.json").is_file():
        return "config.json is missing"
    index = folder / "model.safetensors.index.json"
    try:
        expected = set(json.loads(index.read_text())["weight_map"].values()) if index.is_file() else set()
    except (OSError, ValueError, KeyError):
        return f"{index.name} is not a valid shard index"
    shards = sorted(expected | {p.name for p in folder.glob("*.safetensors")})
    if not shards and not any(folder.glob("*.bin")):
        return "it holds no weight file"
    for name in shards:
        shard = folder / name
        if not shard.is_file():
            return f"{name} is missing"
        try:
            _safetensors_shapes(shard)
        except (OSError, SafetensorError) as err:
            cause = str(err).removeprefix("Error while deserializing header: ")
            return f"{name} is truncated or damaged ({shard.stat().st_size} bytes; safetensors: {cause})"
    return None


# The rule output that marks a checkpoint folder complete, per kind of folder this workflow writes.
CHECKPOINT_MARKERS = ("compressed.json", "manifest.json")


def rebuild_hint(path: Path) -> str:
    """'; rebuild it: snakemake --forcerun <marker>' for a checkpoint folder the workflow wrote, else ''."""
    for marker in CHECKPOINT_MARKERS:
        if (path / marker).is_file():
            return f"; rebuild it: snakemake --forcerun {path / marker}"
    return ""
