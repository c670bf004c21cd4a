"""One way to warn: a line that reaches both the job log and the terminal; native output kept in the job log."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager


def warn(message: str) -> None:
    """Print `warning: message` to stderr and, inside a workflow step (stderr redirected to the job log), also to
    the terminal."""
    line = f"warning: {message}"
    print(line, file=sys.stderr, flush=True)
    if sys.__stderr__ is not None and sys.stderr is not sys.__stderr__:
        print(line, file=sys.__stderr__, flush=True)


@contextmanager
def native_stderr_to_python_stderr() -> Iterator[None]:
    """Send what subprocesses and C code write to file descriptor 2 where `sys.stderr` goes (inside a workflow step:
    the job log), e.g. the `fatal: not a git repository` of lm-eval's `git describe` in a folder without git. Does
    nothing where sys.stderr is file descriptor 2 already or has none."""
    try:
        sys.stderr.flush()
        target = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        target = 2
    if target == 2:
        yield
        return
    saved = os.dup(2)
    os.dup2(target, 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
