"""Scratch folders for hidden-state shards: named after the job that owns them, so a later job can remove the
folders of jobs that were killed (SIGKILL skips every cleanup) without touching those of jobs still running."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PREFIX = "streamline-pairs-"
# Folders of the old naming (no host and pid) are only removed when nothing has written to them for this long.
LEGACY_STALE_SECONDS = 24 * 3600


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def stale_reason(folder: Path, host: str, now: float) -> str | None:
    """Why `folder` (a PREFIX folder owned by this user) is stale, or None when it may still be in use.

    Named `{PREFIX}{host}-{pid}-{random}`: stale when made on this host by a process that no longer exists.
    Any other name (an older version's): stale when unmodified for LEGACY_STALE_SECONDS.
    """
    parts = folder.name[len(PREFIX) :].rsplit("-", 2)
    if len(parts) == 3 and parts[1].isdigit():
        owner_host, pid = parts[0], int(parts[1])
        if owner_host != host or _pid_alive(pid):
            return None
        return f"its job (pid {pid}) is gone"
    age = now - folder.stat().st_mtime
    return f"unmodified for {age / 3600:.0f} h" if age > LEGACY_STALE_SECONDS else None


def remove_stale(base: Path) -> list[Path]:
    """Remove this user's shard folders in `base` left behind by killed jobs; returns what was removed."""
    host, now, removed = socket.gethostname(), time.time(), []
    for folder in sorted(base.glob(PREFIX + "*")):
        try:
            info = folder.lstat()
            if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
                continue
            reason = stale_reason(folder, host, now)
        except OSError:  # removed meanwhile by another job
            continue
        if reason:
            shutil.rmtree(folder, ignore_errors=True)
            print(f"removed stale hidden-state shards {str(folder)!r}: {reason}")
            removed.append(folder)
    return removed


@contextmanager
def shard_scratch(scratch_dir: str | Path | None = None) -> Iterator[Path]:
    """A fresh folder under `scratch_dir` (default: TMPDIR) named after this host and process, removed on exit;
    stale folders of killed jobs are removed first."""
    base = Path(scratch_dir) if scratch_dir else Path(tempfile.gettempdir())
    base.mkdir(parents=True, exist_ok=True)
    remove_stale(base)
    prefix = f"{PREFIX}{socket.gethostname()}-{os.getpid()}-"
    with tempfile.TemporaryDirectory(prefix=prefix, dir=base) as folder:
        yield Path(folder)
