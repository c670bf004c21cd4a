"""One way to warn: a line that reaches both the job log and the terminal."""

from __future__ import annotations

import sys


def warn(message: str) -> None:
    """Print `warning: message` to stderr and, inside a workflow step (stderr redirected to the job log), also to
    the terminal."""
    line = f"warning: {message}"
    print(line, file=sys.stderr, flush=True)
    if sys.__stderr__ is not None and sys.stderr is not sys.__stderr__:
        print(line, file=sys.__stderr__, flush=True)
