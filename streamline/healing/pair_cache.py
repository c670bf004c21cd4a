"""Hidden-state pairs cached once per (dense checkpoint, window, token windows, dtype) and shared by every job.

The pairs (h_start, h_end) a replacement trains on do not depend on the replacement kind: at one target the
ffn, swiglu and layer replacements usually prune the same window (on the embedded default all three remove the
same 9 layers), so without a cache each job ran the same dense forward passes again. An entry is the folder
`{root}/{key}/` holding `train/` and `val/` shards and `complete.json`, written last: a folder without it is
never read. Entries are built in a staging folder named like scratch.py's (host, pid) and renamed into place, so
a killed job leaves only a staging folder, which a later job removes (scratch.remove_stale); two jobs racing
for the same key both compute it and the second one's copy is dropped. Deleting `root` at any time is safe.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from streamline.scratch import PREFIX, remove_stale, shard_scratch

COMPLETE = "complete.json"


def pair_key(dense_dir: str | Path, start: int, end: int, ids: list[torch.Tensor], dtype: torch.dtype, device: str,
             shard_sequences: int) -> str:
    """A hash of everything the pairs depend on: the checkpoint (manifest and weight files' sizes and mtimes,
    so a re-acquired model gets new entries), the window, the token ids, the compute dtype and device."""
    dense_dir = Path(dense_dir)
    digest = hashlib.sha256()
    digest.update((dense_dir / "manifest.json").read_bytes())
    for weights in sorted(dense_dir.glob("*.safetensors")):
        info = weights.stat()
        digest.update(f"{weights.name}:{info.st_size}:{info.st_mtime_ns}".encode())
    digest.update(f"{start}:{end}:{dtype}:{device}:{shard_sequences}".encode())
    for tensor in ids:
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.to(torch.int64).contiguous().numpy().tobytes())
    return f"w{start}-{end}-{digest.hexdigest()[:16]}"


def _shards(folder: Path) -> list[Path]:
    return sorted(folder.glob("shard_*.safetensors"))


@contextmanager
def hidden_pairs(
    compute: Callable[[Path, Path], None], root: str | Path | None, key: str, scratch_dir: str | Path | None = None
) -> Iterator[tuple[list[Path], list[Path], bool]]:
    """Yield (train shards, val shards, reused) for `key`.

    `compute(train_dir, val_dir)` writes the shards when the entry does not exist yet. With `root` None the
    shards go to a scratch folder under `scratch_dir` (default TMPDIR) that is removed afterwards.
    """
    if root is None:
        with shard_scratch(scratch_dir) as scratch:
            compute(scratch / "train", scratch / "val")
            yield _shards(scratch / "train"), _shards(scratch / "val"), False
        return
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    entry = root / key
    reused = (entry / COMPLETE).is_file()
    if not reused:
        remove_stale(root)
        stage = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{socket.gethostname()}-{os.getpid()}-", dir=root))
        try:
            compute(stage / "train", stage / "val")
            (stage / COMPLETE).write_text(json.dumps({"key": key}) + "\n")
            if entry.exists() and not (entry / COMPLETE).is_file():  # left unfinished by an older version
                shutil.rmtree(entry, ignore_errors=True)
            try:
                os.replace(stage, entry)
            except OSError:  # another job finished the same entry first: keep theirs
                if not (entry / COMPLETE).is_file():
                    raise
        finally:
            shutil.rmtree(stage, ignore_errors=True)
    yield _shards(entry / "train"), _shards(entry / "val"), reused
