"""Calibration and perplexity text from a local mirror folder (offline) or the Hugging Face hub."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from streamline.notice import warn

# A text is "far too short" for the samples asked when they need more than this many times its distinct windows.
WINDOW_REPEAT_FACTOR = 2

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


def sample_windows(
    tokenizer: PreTrainedTokenizerBase, text: str, num_samples: int, seq_len: int, seed: int
) -> torch.Tensor:
    """`num_samples` token windows of `seq_len` at seeded random offsets (the SparseGPT/ShortGPT recipe).

    Returns a (num_samples, seq_len) LongTensor. Too little text for one window is an error.
    """
    ids = token_ids(tokenizer, text)
    if ids.numel() <= seq_len:
        raise ValueError(
            f"calibration text has {ids.numel()} tokens, fewer than one sequence of seq_len={seq_len}; "
            "use more text or a shorter seq_len"
        )
    if repeats := window_repeat_warning(ids.numel(), num_samples, seq_len):
        warn(repeats)
    starts = random_starts(ids.numel(), num_samples, seq_len, seed)
    return torch.stack([ids[s : s + seq_len] for s in starts])


def token_ids(tokenizer: PreTrainedTokenizerBase, text: str) -> torch.Tensor:
    """The whole text as one 1-D LongTensor of token ids (no special tokens)."""
    return tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids[0]


def random_starts(num_tokens: int, num_samples: int, seq_len: int, seed: int) -> list[int]:
    """Seeded window start offsets in 0 .. num_tokens - seq_len - 1 (the SparseGPT/ShortGPT recipe)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, num_tokens - seq_len, (num_samples,), generator=generator).tolist()


def split_windows(
    ids: torch.Tensor, train_samples: int, val_samples: int, seq_len: int, seed: int
) -> dict[str, Any]:
    """Training and validation windows from disjoint parts of one token stream `ids` (1-D).

    The validation part is the contiguous tail of val_samples x seq_len tokens, cut into consecutive windows;
    the `train_samples` training windows start at seeded random offsets in the head before it (the recipe of
    `sample_windows`), so no validation token is ever trained on. Returns {"train": (train_samples, seq_len),
    "val": (val_samples, seq_len), "train_starts", "val_starts" (token positions in `ids`), "record"}, where the
    record (for compressed.json) gives each split's tokens and windows. Too little text is an error.
    """
    total = ids.numel()
    val_tokens = val_samples * seq_len
    train_tokens = total - val_tokens
    if train_tokens <= seq_len:
        raise ValueError(
            f"training text has {total} tokens: the validation tail takes val_samples x seq_len = {val_samples} x "
            f"{seq_len} = {val_tokens}, leaving {max(train_tokens, 0)} for training, fewer than one training "
            f"sequence of seq_len + 1 = {seq_len + 1}; use more text, fewer val_samples or a shorter seq_len"
        )
    if repeats := window_repeat_warning(train_tokens, train_samples, seq_len):
        warn(f"training: {repeats}")
    train_starts = random_starts(train_tokens, train_samples, seq_len, seed)
    val_starts = list(range(train_tokens, total - seq_len + 1, seq_len))
    return {
        "train": torch.stack([ids[s : s + seq_len] for s in train_starts]),  # (train_samples, seq_len)
        "val": torch.stack([ids[s : s + seq_len] for s in val_starts]),  # (val_samples, seq_len)
        "train_starts": train_starts,
        "val_starts": val_starts,
        "record": {
            "text_tokens": total,
            "train_tokens": train_tokens,
            "val_tokens": val_tokens,
            "train_windows": train_samples,
            "val_windows": val_samples,
            "seq_len": seq_len,
            "val_first_token": train_tokens,
        },
    }


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
