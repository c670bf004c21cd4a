"""Questionable-but-valid input: warnings that reach both the job log and the terminal.

The pure functions return the warning text (or None), so the workflow (at DAG time) and the library (at run
time) word a problem the same way; `warn` emits one.
"""

from __future__ import annotations

import sys
from typing import Any

from streamline.criteria import CRITERIA
from streamline.healing_kinds import HEALING_KINDS, requested_kinds

# A text is "far too short" for the samples asked when they need more than this many times its distinct windows.
WINDOW_REPEAT_FACTOR = 2


def warn(message: str) -> None:
    """Print `warning: message` to stderr and, inside a workflow step (stderr redirected to the job log), also to
    the terminal."""
    line = f"warning: {message}"
    print(line, file=sys.stderr, flush=True)
    if sys.__stderr__ is not None and sys.stderr is not sys.__stderr__:
        print(line, file=sys.__stderr__, flush=True)


def config_seq_lens(config: dict[str, Any]) -> dict[str, int]:
    """The sequence lengths the configured jobs run at (config key -> tokens): calibration and perplexity always,
    training when some healing trains, search when a search method is configured."""
    trains = any(HEALING_KINDS[kind].trains for kind in requested_kinds(config["healing"], config["replacements"]))
    seq_lens = {key: config[key.split(".")[0]]["seq_len"] for key in ("calibration.seq_len", "perplexity.seq_len")}
    if trains:
        seq_lens["training.seq_len"] = config["training"]["seq_len"]
    if any(CRITERIA[method].kind == "search" for method in config["methods"]):
        seq_lens["search.seq_len"] = config["search"]["seq_len"]
    return seq_lens


def seq_len_warnings(model: str, max_positions: int | None, seq_lens: dict[str, int]) -> list[str]:
    """One warning per `seq_lens` entry (config key -> tokens) longer than the model's position range."""
    if not max_positions:
        return []
    return [
        f"{key}={value} exceeds the max_position_embeddings={max_positions} of model {model!r}; "
        "positions beyond it are extrapolated and its results are not comparable"
        for key, value in seq_lens.items()
        if value > max_positions
    ]


def window_repeat_warning(num_tokens: int, num_samples: int, seq_len: int) -> str | None:
    """Warn when `num_samples` windows of `seq_len` tokens far exceed the text's distinct (non-overlapping) ones."""
    distinct = num_tokens // seq_len
    if num_samples <= WINDOW_REPEAT_FACTOR * distinct:
        return None
    return (
        f"{num_samples} samples of seq_len={seq_len} asked from a text of {num_tokens} tokens, which holds only "
        f"{distinct} distinct windows; the samples repeat the same text (use more text, fewer samples or a "
        "shorter seq_len)"
    )
