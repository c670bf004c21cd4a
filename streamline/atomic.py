"""Atomic file writes: a killed job never leaves a file that looks complete."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from streamline.numerics import NonFiniteError, first_nonfinite


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; it is renamed onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A fresh unique name opened normally (not mkstemp) so the file gets the usual umask permissions.
    tmp_path = path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp"
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | Path, data: Any) -> None:
    """`data` as JSON (sorted keys, 2-space indent); NaN/Infinity are refused (JSON has no such numbers, and a
    result holding one is wrong): one line naming the file and the first such value, nothing written."""
    try:
        text = json.dumps(data, indent=2, sort_keys=True, default=str, allow_nan=False)
    except ValueError as exc:
        found = first_nonfinite(data)
        if found is None:
            raise
        where, value = found
        raise NonFiniteError(
            f"{Path(path).name}: {where or 'the value'} is {value}, not a finite number; nothing was written"
        ) from exc
    write_text(path, text + "\n")


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def copy_files(sources: list[str | Path], targets: list[str | Path]) -> None:
    """Copy each source onto its target atomically (content only: the copy is newer than its source), in order."""
    if len(sources) != len(targets):
        raise ValueError(f"{len(sources)} files to copy onto {len(targets)} targets")
    for source, target in zip(map(Path, sources), map(Path, targets)):
        write_with(target, lambda tmp, source=source: shutil.copyfile(source, tmp))


def write_with(path: str | Path, writer: Callable[[Path], None]) -> None:
    """Call `writer(tmp_path)` and move the result onto `path` atomically (for savefig, to_csv, ...)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        final_tmp = tmp.with_suffix(path.suffix)
        try:
            writer(final_tmp)
            os.replace(final_tmp, tmp)
        finally:
            if final_tmp.exists():
                final_tmp.unlink()


@contextmanager
def staged_dir(target: str | Path) -> Iterator[Path]:
    """Yield an empty staging folder; on success its files are moved into `target` (created if needed).

    Used for checkpoints written by `save_pretrained`, which writes many files: a crash leaves only the
    hidden staging folder behind, never a half-written checkpoint in `target`.
    """
    target = Path(target)
    target.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".stage-", dir=target))
    try:
        yield stage
        for item in sorted(stage.iterdir()):
            dest = target / item.name
            if dest.is_dir() and not dest.is_symlink():
                shutil.rmtree(dest)
            os.replace(item, dest)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
