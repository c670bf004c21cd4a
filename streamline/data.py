"""Calibration and perplexity text from a local mirror folder (offline) or the Hugging Face hub."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

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
                parts.append(path.read_text(encoding="utf-8"))
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
    return path.read_text(encoding="utf-8")


def sample_windows(
    tokenizer: PreTrainedTokenizerBase, text: str, num_samples: int, seq_len: int, seed: int
) -> torch.Tensor:
    """`num_samples` token windows of `seq_len` at seeded random offsets (the SparseGPT/ShortGPT recipe).

    Returns a (num_samples, seq_len) LongTensor. Too little text for one window is an error.
    """
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids[0]
    if ids.numel() <= seq_len:
        raise ValueError(
            f"calibration text has {ids.numel()} tokens, fewer than one sequence of seq_len={seq_len}; "
            "use more text or a shorter seq_len"
        )
    generator = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, ids.numel() - seq_len, (num_samples,), generator=generator)
    return torch.stack([ids[s : s + seq_len] for s in starts.tolist()])


def perplexity_text(dataset: str, mirror: Path | None) -> str:
    """WikiText-2 raw test split joined with blank lines, the standard perplexity recipe."""
    if dataset not in PERPLEXITY_MIRROR_FILES:
        raise ValueError(f"perplexity dataset {dataset!r} is not supported; allowed: {sorted(PERPLEXITY_MIRROR_FILES)}")
    if mirror is None:
        return _hub_text(PERPLEXITY_HUB[dataset], "\n\n")
    path = mirror / PERPLEXITY_MIRROR_FILES[dataset]
    if not path.is_file():
        raise FileNotFoundError(f"perplexity file {str(path)!r} is missing from the data mirror")
    with path.open(encoding="utf-8") as fh:
        rows = [json.loads(line)["text"] for line in fh if line.strip()]
    return "\n\n".join(rows)
