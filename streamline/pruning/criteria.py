"""Layer-pruning criteria and their registry (CRITERIA, at the end of this module; README "Adding a criterion").

A window criterion (streamline, gromov, last-n) gives a window table and `prune.plan_pruning` removes its best
window; the others give layer indices in removal order and `prune.plan_from_order` keeps the shortest prefix whose
parameters reach the target sparsity. The search criteria's forward passes are searches.py's (imported when a
search runs, so reading this registry imports no torch: Snakemake's parse and the `prune` job read it); layer
surgery (skipping, merging, dropping layers) is surgery.py's.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from streamline.importance.windows import METRICS
from streamline.pruning.plans import check_sparsity, last_n_table, sparsity_denominator


def shortgpt_order(table: pd.DataFrame) -> list[int]:
    """Block Influence BI_i = 1 - mean cos(input, output) of layer i; lowest BI first (ties: lower index)."""
    single = table[table["num_layers"] == 1]
    influence = {int(r.start_layer): 1.0 - float(r.score) for r in single.itertuples()}
    return sorted(influence, key=lambda i: (influence[i], i))


def random_order(num_layers: int, seed: int) -> list[int]:
    import torch  # here, not at the top: the registry is read without torch (module docstring)

    return torch.randperm(num_layers, generator=torch.Generator().manual_seed(seed)).tolist()


def reverse_order(num_layers: int) -> list[int]:
    """Layer removal order of reverse-order pruning: the last layer first (Navigation-LLM-layer-pruning @ e1f938af,
    prune_llm.py:196-197; healing/last_layers.py cites the rest of that paper's code)."""
    if num_layers < 1:
        raise ValueError(f"num_layers {num_layers} must be at least 1")
    return list(range(num_layers - 1, -1, -1))


def last_n_order(num_layers: int) -> list[int]:
    """The last layers before the final one: L-2, L-3, ... (a prefix of length n is one window)."""
    return list(range(num_layers - 2, -1, -1))


def enough_for_target(layer_params: list[int], total: int, target: float) -> Callable[[list[int]], bool]:
    """`enough(removed)`: do the removed layers' parameters reach `target` x the dense total?"""

    def enough(removed: list[int]) -> bool:
        return bool(removed) and sum(layer_params[i] for i in removed) / total >= target

    return enough


def search_enough(
    manifest: dict[str, Any], max_sparsity: float | None, max_layers: int | None, sparsity_of: str
) -> Callable[[list[int]], bool]:
    """`enough(removed)` for a search method: its order must reach the largest sparsity and the largest layer count."""
    if max_sparsity is None and max_layers is None:
        raise ValueError("a search method needs a target: sparsities and prune_layers are both empty")
    layer_params = [int(p) for p in manifest["layer_params"]]
    by_params = None
    if max_sparsity is not None:
        denominator = sparsity_denominator(manifest, sparsity_of)
        by_params = enough_for_target(layer_params, denominator, check_sparsity(max_sparsity))

    def enough(removed: list[int]) -> bool:
        by_count = max_layers is None or len(removed) >= max_layers
        return bool(removed) and by_count and (by_params is None or by_params(removed))

    return enough


# The registry of pruning criteria, modelled on lm-eval's (lm_eval/api/registry.py: `register_model("name")`
# fills one name -> entry table that every lookup goes through). Each criterion is registered once with what its
# job needs; steps.py, rules/common.smk (inputs, params, wildcards) and the schema's `methods` enum read it.
# Kinds, and the signature of `layers` for each:
#   window  layers(table, num_layers, settings) -> a window table (importance.window_table's columns); the plan
#           removes its best window of n consecutive layers, so a replacement can take their place;
#   order   layers(table, num_layers, settings) -> layer indices in removal order, computed in the `prune` job;
#   search  layers(model, batches, enough, settings) -> {"order": [...], ...}, found by forward passes of the model
#           in the `select_layers` job (once per model, up to the largest target); the plans take its prefixes.
# `table` is the importance table named by `metric` (None when the criterion reads none) and `settings` maps each
# config key of `settings` (dotted, e.g. "search.seed") to its value: only those keys reach the criterion's job.
KINDS = ("window", "order", "search")
NAME = re.compile(r"[a-z0-9]+(-[a-z0-9]+)*")  # a variant folder is {method}-{healing}


@dataclass(frozen=True)
class Criterion:
    name: str
    kind: str
    layers: Callable[..., Any] = field(repr=False)
    metric: str | None = None
    settings: tuple[str, ...] = ()
    # A search criterion whose `layers` returns {"windows": a window table's rows} instead of an order (ppl-window):
    # its plans remove the best window, like a window criterion's.
    finds_window: bool = False

    @property
    def window(self) -> bool:
        """Removes one window of consecutive layers, so the window healings (replacements, lm-loss) apply."""
        return self.kind == "window" or self.finds_window

    @property
    def job(self) -> str:
        """The rule that runs `layers` (and so the one its settings reach)."""
        return "select_layers" if self.kind == "search" else "prune"


CRITERIA: dict[str, Criterion] = {}


def register(criterion: Criterion) -> Criterion:
    """Add `criterion` to the registry (once); its fields are checked here, so a bad entry fails at import."""
    name = criterion.name
    if name in CRITERIA:
        raise ValueError(f"criterion {name!r} is already registered")
    if not NAME.fullmatch(name) or name == "dense":
        raise ValueError(f"criterion name {name!r} is not lower-case words joined by '-' (or is reserved)")
    if criterion.kind not in KINDS:
        raise ValueError(f"criterion {name!r}: kind {criterion.kind!r} is unknown; allowed: {', '.join(KINDS)}")
    if criterion.metric is not None and criterion.metric not in METRICS:
        raise ValueError(f"criterion {name!r}: metric {criterion.metric!r} is unknown; allowed: {', '.join(METRICS)}")
    if criterion.kind == "search" and criterion.metric is not None:
        raise ValueError(f"criterion {name!r}: a search criterion reads the model, not an importance table")
    if criterion.finds_window and criterion.kind != "search":
        raise ValueError(f"criterion {name!r}: finds_window is for search criteria (a window criterion has a table)")
    CRITERIA[name] = criterion
    return criterion


def get(name: str) -> Criterion:
    """The registered criterion `name`; an unknown name is one line naming it and the known ones."""
    if name not in CRITERIA:
        raise ValueError(f"method {name!r} is unknown; allowed: {', '.join(CRITERIA)}")
    return CRITERIA[name]


def settings_of(criterion: Criterion, config: dict[str, Any]) -> dict[str, Any]:
    """The config values the criterion registered, by dotted key ({"search.seed": 0}); nothing else reaches it."""
    values = {}
    for key in criterion.settings:
        value = config
        for part in key.split("."):
            if not isinstance(value, dict) or part not in value:
                raise ValueError(f"criterion {criterion.name!r} reads config key {key!r}, which the config lacks")
            value = value[part]
        values[key] = value
    return values


WINDOW_COLUMNS = ("start_layer", "num_layers", "score", "metric")


def function_name(function: Callable[..., Any]) -> str:
    """`name` in `file` of a criterion's function, so a message points at the code (a plugin's file)."""
    code = getattr(function, "__code__", None)
    where = f" in {code.co_filename}" if code is not None else ""
    return f"{getattr(function, '__qualname__', repr(function))}{where}"


def _shown(value: Any, limit: int = 120) -> str:
    text = repr(value) if not isinstance(value, pd.DataFrame) else f"a DataFrame with columns {list(value.columns)}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_result(criterion: Criterion, result: Any, num_layers: int) -> Any:
    """What a criterion's `layers` returned, checked against the model (num_layers decoder layers) before any plan
    is made from it: a window table whose windows lie inside the model and whose scores are finite numbers, or an
    order of distinct layer indices 0..num_layers-1 (as ints). Anything else is one line naming the criterion, its
    function (a plugin's file) and what it returned."""
    def refuse(problem: str) -> ValueError:
        return ValueError(
            f"criterion {criterion.name!r} (function {function_name(criterion.layers)}) returned "
            f"{_shown(result)}: {problem}"
        )

    if criterion.window:
        if not isinstance(result, pd.DataFrame) or not set(WINDOW_COLUMNS) <= set(result.columns):
            raise refuse(f"a window criterion returns a window table, a pandas DataFrame with columns "
                         f"{', '.join(WINDOW_COLUMNS)}")
        if result.empty:
            raise refuse("the window table has no row")
        for row in result.itertuples(index=False):
            start, n, score = row.start_layer, row.num_layers, row.score
            if not (float(start).is_integer() and float(n).is_integer()):
                raise refuse(f"window start_layer={start}, num_layers={n} are not whole numbers")
            if not (1 <= n <= num_layers - 1 and 0 <= start and start + n <= num_layers):
                raise refuse(f"window start_layer={int(start)}, num_layers={int(n)} lies outside the model's "
                             f"{num_layers} layers (a window is 1..{num_layers - 1} layers inside 0..{num_layers - 1})")
            if not isinstance(score, (int, float, np.number)) or not math.isfinite(score):
                raise refuse(f"window start_layer={int(start)}, num_layers={int(n)} has score {score!r}, not a "
                             "finite number")
        return result
    if isinstance(result, (str, bytes, dict)) or not hasattr(result, "__iter__"):
        raise refuse("an order criterion returns a list of layer indices")
    order = list(result)
    if any(isinstance(i, bool) or not isinstance(i, (int, np.integer)) for i in order):
        bad = next(i for i in order if isinstance(i, bool) or not isinstance(i, (int, np.integer)))
        raise refuse(f"{bad!r} is not a layer index (an int)")
    order = [int(i) for i in order]
    outside = [i for i in order if not 0 <= i < num_layers]
    if outside:
        raise refuse(f"layer {outside[0]} is outside the model's layers 0..{num_layers - 1}")
    repeated = sorted({i for i in order if order.count(i) > 1})
    if repeated:
        raise refuse(f"layer {repeated[0]} appears {order.count(repeated[0])} times; an order lists distinct layers")
    if not order:
        raise refuse("the order is empty")
    return order


def check_search_record(criterion: Criterion, record: Any, num_layers: int) -> dict[str, Any]:
    """A search criterion's record: {"order": [...]} (or {"windows": rows} for one that finds a window), checked as
    check_result checks an order or a window table."""
    key = "windows" if criterion.finds_window else "order"
    if not isinstance(record, dict) or key not in record:
        raise ValueError(
            f"criterion {criterion.name!r} (function {function_name(criterion.layers)}) returned {_shown(record)}: "
            f"a search criterion returns a dict with {key!r}"
        )
    if criterion.finds_window:
        rows = record["windows"]
        table = pd.DataFrame(rows) if isinstance(rows, list) and all(isinstance(r, dict) for r in rows) else rows
        check_result(criterion, table, num_layers)
    else:
        record = {**record, "order": check_result(criterion, record["order"], num_layers)}
    return record


def check_settings(criterion: Criterion, settings: dict[str, Any]) -> dict[str, Any]:
    """`settings` as the criterion's job got them: exactly its registered keys, or one line naming the difference."""
    if set(settings) != set(criterion.settings):
        raise ValueError(
            f"criterion {criterion.name!r} reads the settings {list(criterion.settings)}, not {sorted(settings)}"
        )
    return settings


# The search criteria: searches.py loads with torch, so each is imported here only when its search runs.
def _sleb(model: Any, batches: list[Any], enough: Callable, settings: dict) -> dict[str, Any]:
    from streamline.pruning import searches

    return searches.sleb_search(model, batches, enough, settings)


def _shortened_ppl(model: Any, batches: list[Any], enough: Callable, settings: dict) -> dict[str, Any]:
    from streamline.pruning import searches

    return searches.shortened_ppl_search(model, batches, enough, settings)


def _laco(model: Any, batches: list[Any], enough: Callable, settings: dict) -> dict[str, Any]:
    from streamline.pruning import searches

    return searches.laco_search(model, batches, enough, settings)


def _ppl_window(model: Any, batches: list[Any], enough: Callable, settings: dict) -> dict[str, Any]:
    from streamline.pruning import searches

    return searches.ppl_window_search(model, batches, enough, settings)


register(Criterion("streamline", "window", lambda table, num_layers, settings: table, metric="cosine"))
register(Criterion("gromov", "window", lambda table, num_layers, settings: table, metric="angular_last"))
register(Criterion("last-n", "window", lambda table, num_layers, settings: last_n_table(num_layers)))
# Reverse-order pruning (Lu et al. 2025; last_layers.py cites prune_llm.py:194-197, `--pr_method tail`): the last
# layers go first, the final decoder layer included (unlike last-n, which keeps it).
register(Criterion("reverse", "order", lambda table, num_layers, settings: reverse_order(num_layers)))
register(Criterion("shortgpt", "order", lambda table, num_layers, settings: shortgpt_order(table), metric="cosine"))
register(
    Criterion(
        "random",
        "order",
        lambda table, num_layers, settings: random_order(num_layers, settings["search.seed"]),
        settings=("search.seed",),
    )
)
register(Criterion("sleb", "search", _sleb))
register(Criterion("shortened-ppl", "search", _shortened_ppl))
register(Criterion("laco", "search", _laco, settings=("laco",)))
register(Criterion("ppl-window", "search", _ppl_window, finds_window=True))
