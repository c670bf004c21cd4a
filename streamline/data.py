"""Calibration and perplexity text from a local mirror folder (offline) or the Hugging Face hub; no torch (Snakemake's
parse reads the mirror's file lists). The token windows cut from the text: token_windows.py."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

MIRROR_ENV = "STREAMLINE_DATA_MIRROR"

# Calibration corpora: file(s) inside the mirror, and the hub dataset used when no mirror is set.
CALIBRATION_MIRROR_FILES = {
    "wikitext2": ["wikitext-2-raw/wikitext2_train_5k.txt"],
    "c4": ["calibration_text/c4.utf8"],
    "wiki": ["calibration_text/wiki.utf8"],
    "tinystories": ["tinystories/tiny.utf8"],
}
CALIBRATION_HUB = {
    "wikitext2": ("Salesforce/wikitext", "wikitext-2-raw-v1", "train"),
    "tinystories": ("roneneldan/TinyStories", None, "validation"),
}
PERPLEXITY_MIRROR_FILES = {"wikitext2": "wikitext-2-raw/test.jsonl"}
PERPLEXITY_HUB = {"wikitext2": ("Salesforce/wikitext", "wikitext-2-raw-v1", "test")}


def resolve_mirror(configured: str | None) -> Path | None:
    """The data mirror folder: the config value, else $STREAMLINE_DATA_MIRROR, else None (use the hub)."""
    value = configured or os.environ.get(MIRROR_ENV)
    if not value:
        return None
    path = Path(value).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"data mirror {value!r} is not a folder")
    return path.resolve()


def dataset_files(dataset: str, mirror: Path | None, perplexity: bool = False) -> list[Path]:
    """The local files a calibration/training `dataset` (or, with `perplexity`, a perplexity dataset) is read from:
    its data mirror files, or the text file it names; none for a hub source (the workflow makes them inputs of the
    jobs that read them, so editing one re-runs them)."""
    if perplexity:
        known = mirror is not None and dataset in PERPLEXITY_MIRROR_FILES
        return [mirror / PERPLEXITY_MIRROR_FILES[dataset]] if known else []
    if dataset in CALIBRATION_MIRROR_FILES:
        return [mirror / rel for rel in CALIBRATION_MIRROR_FILES[dataset]] if mirror is not None else []
    return [Path(dataset).expanduser()]


def _hub_text(spec: tuple[str, str | None, str], joiner: str) -> str:
    import datasets

    repo, name, split = spec
    rows = datasets.load_dataset(repo, name, split=split)
    return joiner.join(rows["text"])


def calibration_text(dataset: str, mirror: Path | None) -> str:
    """Raw calibration text: a named corpus (mirror or hub) or a path to a UTF-8 text file."""
    if dataset in CALIBRATION_MIRROR_FILES:
        if mirror is not None:
            parts = []
            for rel in CALIBRATION_MIRROR_FILES[dataset]:
                path = mirror / rel
                if not path.is_file():
                    raise FileNotFoundError(f"calibration file {str(path)!r} is missing from the data mirror")
                parts.append(read_text_file(path))
            return "\n\n".join(parts)
        if dataset not in CALIBRATION_HUB:
            raise ValueError(
                f"calibration dataset {dataset!r} needs a data mirror; hub sources: {sorted(CALIBRATION_HUB)}"
            )
        return _hub_text(CALIBRATION_HUB[dataset], "\n\n")
    path = Path(dataset).expanduser()
    if not path.is_file():
        allowed = ", ".join(sorted(CALIBRATION_MIRROR_FILES))
        raise ValueError(f"calibration dataset {dataset!r} is neither one of {allowed} nor an existing text file")
    return read_text_file(path)


def read_text_file(path: Path) -> str:
    """A UTF-8 text file; a binary or otherwise non-UTF-8 file is one error naming it and the first bad byte."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        bad = exc.object[exc.start : exc.start + 1].hex()
        raise ValueError(
            f"text file {str(path)!r} is not UTF-8 text (byte 0x{bad} at offset {exc.start}); give a plain text file"
        ) from None


def read_jsonl(path: Path, required: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """The rows of a JSON-lines file (blank lines skipped), each an object holding the `required` fields.

    A malformed row is one error naming the file and the line.
    """
    rows = []
    with path.open("rb") as fh:
        for number, raw in enumerate(fh, start=1):
            where = f"{str(path)!r} line {number}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                bad = f"byte 0x{raw[exc.start]:02x} at column {exc.start + 1}"
                raise ValueError(f"{where}: not UTF-8 text ({bad})") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                problem = exc.msg.removesuffix(" at")
                raise ValueError(f"{where}: invalid JSON ({problem} at column {exc.colno})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{where}: a JSON object was expected, got {type(row).__name__}")
            missing = [field for field in required if field not in row]
            if missing:
                raise ValueError(f"{where}: no field {missing[0]!r} (fields: {', '.join(row)})")
            rows.append(row)
    return rows


def perplexity_text(dataset: str, mirror: Path | None) -> str:
    """WikiText-2 raw test split joined with blank lines, the standard perplexity recipe."""
    if dataset not in PERPLEXITY_MIRROR_FILES:
        raise ValueError(f"perplexity dataset {dataset!r} is not supported; allowed: {sorted(PERPLEXITY_MIRROR_FILES)}")
    if mirror is None:
        return _hub_text(PERPLEXITY_HUB[dataset], "\n\n")
    path = mirror / PERPLEXITY_MIRROR_FILES[dataset]
    if not path.is_file():
        raise FileNotFoundError(f"perplexity file {str(path)!r} is missing from the data mirror")
    return "\n\n".join(str(row["text"]) for row in read_jsonl(path, required=("text",)))
