"""Token windows cut from a text: seeded random windows (the SparseGPT/ShortGPT calibration recipe) and the
training/validation split of the healing data (data.py reads the text)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from streamline.notice import warn

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

# A text is "far too short" for the samples asked when they need more than this many times its distinct windows.
WINDOW_REPEAT_FACTOR = 2


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
