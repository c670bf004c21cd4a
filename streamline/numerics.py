"""No silently wrong number: find the first NaN/Inf in a result and stop with one line naming it.

Every step checks what it is about to write (steps.py): a non-finite loss, perplexity, score, similarity, fitted
map or training loss stops the job (`NonFiniteError`, a FloatingPointError, so the job prints one line naming the
step, the variant and the quantity) before any output that looks complete is written; `atomic.write_json`
refuses NaN/Infinity the same way, so no JSON file of this project ever holds them.
"""

from __future__ import annotations

import math
from typing import Any


class NonFiniteError(FloatingPointError):
    """A result holds NaN or an infinity where a number is required."""


def _is_tensor(value: Any) -> bool:
    return hasattr(value, "isfinite") and hasattr(value, "shape") and hasattr(value, "dtype")


def first_nonfinite(value: Any, path: str = "") -> tuple[str, Any] | None:
    """(where, value) of the first NaN/Inf in `value` (nested dicts, lists, floats, tensors and arrays), where being
    a path like `windows[3].score` (a tensor element: `cosine[2, 5]`); None when every number is finite."""
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else (path, value)
    if isinstance(value, dict):
        for key, item in value.items():
            found = first_nonfinite(item, f"{path}.{key}" if path else str(key))
            if found:
                return found
        return None
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            found = first_nonfinite(item, f"{path}[{i}]")
            if found:
                return found
        return None
    if _is_tensor(value):  # torch tensors; numpy arrays answer through float() below per element
        if not value.dtype.is_floating_point or bool(value.isfinite().all()):
            return None
        bad = (~value.isfinite()).nonzero()[0].tolist()
        return (f"{path}[{', '.join(map(str, bad))}]", float(value[tuple(bad)]))
    if hasattr(value, "dtype") and hasattr(value, "tolist"):  # numpy scalars and arrays
        return first_nonfinite(value.tolist(), path)
    return None


def require_finite(what: str, value: Any, advice: str = "") -> None:
    """Raise NonFiniteError naming `what`, the place of its first NaN/Inf and `advice` (what to do), if it has one:
    `the perplexity result: nll_per_token is nan, not a finite number; ...`."""
    found = first_nonfinite(value)
    if found:
        where, bad = found
        place = f"{what}: {where}" if where else what
        raise NonFiniteError(f"{place} is {bad}, not a finite number{'; ' + advice if advice else ''}")


def nonfinite_cause(dtype: Any) -> str:
    """What to do about a non-finite activation computed in `dtype`: a wider dtype only helps a 16-bit one."""
    name = str(dtype).removeprefix("torch.")
    if name in ("float16", "bfloat16"):
        return f"an overflow in {name}? run with dtype: float32"
    return (
        f"computed in {name}, so not a precision limit: the weights or the data produce it (acquisition refuses "
        "non-finite weights; a healed checkpoint gets them from diverging training: lower training.lr)"
    )
