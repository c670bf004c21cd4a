"""Run one workflow step with its output in a log file and any failure reported as one clear line."""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path

# Errors that mean bad input or a bad environment: reported as one line, not a traceback.
USER_ERRORS = (ValueError, FileNotFoundError, RuntimeError, FloatingPointError, KeyError, OSError)


def job_threads(threads: int) -> int:
    """The rule's `threads`, capped at the CPUs available to this process (its affinity: a SLURM allocation, a
    container's CPU set)."""
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(int(threads), available))


@contextmanager
def logged_step(log_path: str | Path, name: str, threads: int | None = None) -> Iterator[None]:
    """Redirect stdout/stderr to `log_path`; on failure log the traceback and exit 1 with one line on stderr.

    `threads` (the rule's thread count, at most --cores) caps torch's intra-op threads, so parallel jobs do not
    oversubscribe; never above the CPUs this process may run on (`--cores 8` on a 2-core laptop gives a heavy
    job 8 threads, which torch would otherwise start on 2 cores).
    """
    if threads:
        import torch

        torch.set_num_threads(job_threads(threads))
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    terminal = sys.stderr
    with log_path.open("w", encoding="utf-8") as log:
        try:
            with redirect_stdout(log), redirect_stderr(log):
                yield
        except USER_ERRORS as exc:
            traceback.print_exc(file=log)
            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            print(f"{name}: {message}", file=terminal)
            raise SystemExit(1) from None
