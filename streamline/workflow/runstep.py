"""Run one workflow step with its output in a log file and any failure reported as one clear line.

Every exception a step raises ends the job with exit status 1 and ONE line on the terminal, `{job}: {what}`, naming
the job (rule and wildcards: the model and variant) and the input or setting at fault with what to do; the
traceback goes to the job's log. Bad input (ValueError, OSError, ... raised with a message written for the user)
prints its message; a full disk, a damaged safetensors file, a Python file that does not parse or import (a plugin,
a task's `!function` module) get a line saying so; anything else (a bug, a plugin's TypeError) names the file and
line it was raised at and the log.
"""

from __future__ import annotations

import errno
import os
import sys
import sysconfig
import traceback
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path

# Errors that mean bad input or a bad environment, raised with a message written for the user: printed as they are.
USER_ERRORS = (ValueError, FileNotFoundError, RuntimeError, FloatingPointError, KeyError, OSError)
DISK_FULL = ("os error 28", "No space left on device", "StorageFull")


def job_threads(threads: int) -> int:
    """The rule's `threads`, capped at the CPUs available to this process (its affinity: a SLURM allocation, a
    container's CPU set)."""
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(int(threads), available))


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc).strip() else ""


def _raised_at(exc: BaseException) -> str:
    """`file line N` of the innermost frame outside Python's and the installed libraries (this project's code, a
    plugin, a task module), else of the innermost frame."""
    frames = traceback.extract_tb(exc.__traceback__)
    paths = sysconfig.get_paths()
    libraries = tuple({paths[key] for key in ("stdlib", "platstdlib", "purelib", "platlib") if key in paths})
    own = [f for f in frames if not f.filename.startswith(libraries) and not f.filename.startswith("<")]
    frame = (own or frames or [None])[-1]
    return f"{frame.filename} line {frame.lineno}" if frame is not None else "an unknown place"


def failure_line(exc: BaseException, log_path: str | Path) -> str:
    """The one line (without the job's name) that reports `exc`."""
    message = _first_line(exc)
    text = f"{type(exc).__name__} {exc}"
    if (isinstance(exc, OSError) and exc.errno == errno.ENOSPC) or any(mark in text for mark in DISK_FULL):
        return (
            "the disk is full (No space left on device) while writing the job's outputs; nothing partial was kept: "
            "free space (df -h results) or move results/ and TMPDIR to a larger disk, then run snakemake again"
        )
    if type(exc).__name__ == "SafetensorError":
        return (
            f"a safetensors file could not be read or written ({message}); if it is a checkpoint under results/, "
            "rebuild it with snakemake --forcerun on its manifest.json or compressed.json"
        )
    if isinstance(exc, SyntaxError):
        return f"{exc.filename} line {exc.lineno} does not parse ({exc.msg}): fix that Python file"
    if isinstance(exc, ImportError):
        missing = f" (module {exc.name!r})" if exc.name else ""
        return (
            f"an import failed{missing}: {message} (raised at {_raised_at(exc)}); install the module or fix the name "
            "in the plugin or task file that imports it"
        )
    if isinstance(exc, USER_ERRORS):
        return message or type(exc).__name__
    return (
        f"{type(exc).__name__}: {message} (raised at {_raised_at(exc)}); a bug in that code (a plugin's, or this "
        f"project's: please report it); traceback in {log_path}"
    )


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
        except Exception as exc:  # noqa: BLE001 - every failure of a job is one line; the traceback goes to the log
            traceback.print_exc(file=log)
            print(f"{name}: {failure_line(exc, log_path)}", file=terminal)
            raise SystemExit(1) from None
