"""The one table renderer: a frame of variants (frame.py) as Markdown or LaTeX, with one way to print a target, a
value and its interval, one bolding rule and one escape.

A cell shows the value and, where paired.csv gives one, `± half-width` of its 95% interval; an arrow marks a
difference from plain removal of the same window whose paired interval excludes 0 (↑ better, ↓ worse); bold is the
best base-budget value at its target only when it is resolved against the runner-up (never a tie).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from streamline.reporting.frame import target_label

LABELS = ["model", "method", "healing", "target"]


@dataclass(frozen=True)
class Column:
    """A value column: the frame's `key`, its `header` and `digits` (None: printed as it is)."""

    key: str
    header: str
    digits: int | None = 1


def _number(value, digits: int | None) -> str:
    if isinstance(value, str):
        return value
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if digits is None:
        return str(value)
    return f"{value:,.0f}" if digits == 0 else f"{value:.{digits}f}"


@dataclass(frozen=True)
class Style:
    """How one output format writes the pieces of a cell."""

    pm: str
    up: str
    down: str
    bold: tuple[str, str]


MARKDOWN = Style(pm=" ± ", up=" ↑", down=" ↓", bold=("**", "**"))
LATEX = Style(pm=r" $\pm$ ", up=r" $\uparrow$", down=r" $\downarrow$", bold=(r"\textbf{", "}"))


def cell(row: pd.Series, column: Column, style: Style, escape=lambda text: text) -> str:
    text = escape(_number(row.get(column.key), column.digits))
    if not text:
        return ""
    low, high = row.get(f"{column.key}:low"), row.get(f"{column.key}:high")
    if column.digits is not None and _present(low) and _present(high):
        text += style.pm + _number((high - low) / 2, column.digits)
    mark = row.get(f"{column.key}:vs_removal")
    text += style.up if mark == 1 else style.down if mark == -1 else ""
    best = row.get(f"{column.key}:best")
    return f"{style.bold[0]}{text}{style.bold[1]}" if isinstance(best, (bool, np.bool_)) and best else text


def _present(value) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def _labels(row: pd.Series, labels: list[str]) -> list[str]:
    return [target_label(row) if label == "target" else str(row[label]) for label in labels]


def latex_escape(text: str) -> str:
    for char, repl in (("\\", r"\textbackslash{}"), ("_", r"\_"), ("%", r"\%"), ("&", r"\&"), ("#", r"\#")):
        text = text.replace(char, repl)
    return text


def markdown(
    frame: pd.DataFrame, columns: list[Column], title: str, notes: list[str], labels: list[str] = LABELS
) -> str:
    """`frame`'s rows as a Markdown table under `title`; `notes` (what it shows, what is missing) below it."""
    lines = [f"# {title}", ""]
    if frame.empty:
        lines.append("(no rows)")
    else:
        headers = [*labels, *(c.header for c in columns)]
        lines += ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        for _, row in frame.iterrows():
            lines.append("| " + " | ".join(_labels(row, labels) + [cell(row, c, MARKDOWN) for c in columns]) + " |")
    lines += [""] + [f"- {note}" for note in notes]
    return "\n".join(lines) + "\n"


def latex(frame: pd.DataFrame, columns: list[Column], notes: list[str], labels: list[str] = LABELS) -> str:
    """The same table as a booktabs tabular; notes as LaTeX comments."""
    lines = [f"% {note}" for note in notes]
    if frame.empty:
        return "\n".join(lines + ["% (no rows)"]) + "\n"
    headers = [*labels, *(c.header for c in columns)]
    lines += [
        r"\begin{tabular}{" + "l" * len(labels) + "r" * len(columns) + "}",
        r"\toprule",
        " & ".join(latex_escape(h) for h in headers) + r" \\",
        r"\midrule",
    ]
    for _, row in frame.iterrows():
        cells = [latex_escape(text) for text in _labels(row, labels)]
        cells += [cell(row, c, LATEX, latex_escape) for c in columns]
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def interval_note(frame: pd.DataFrame) -> str:
    """The note every table with intervals carries (or says that it has none)."""
    if not any(str(c).endswith(":low") for c in frame.columns):
        return "no intervals: this table was made without paired.csv"
    return (
        "± = half-width of the 95% paired-bootstrap interval of the value (examples resampled; perplexity: windows); "
        "↑/↓ = better/worse than plain removal of the same window ({method}-none at the same target) with a paired "
        "95% interval that excludes 0; bold = the best value at its target, resolved against the runner-up "
        "(ties are never bold); every difference and interval is in tables/paired.csv"
    )
