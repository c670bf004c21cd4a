"""Questionable-but-valid input: warnings that reach both the job log and the terminal.

The pure functions return the warning text (or None), so the workflow (at DAG time) and the library (at run
time) word a problem the same way; `streamline.notice.warn` emits one.
"""

from __future__ import annotations

from typing import Any

from streamline.healing.kinds import HEALING_KINDS, requested_kinds
from streamline.pruning.criteria import CRITERIA


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
