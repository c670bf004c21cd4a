"""Layer-pruning criteria and their registry (CRITERIA, at the end of this module; README "Adding a criterion").

A window criterion (streamline, gromov, last-n) gives a window table and `prune.plan_pruning` removes its best
window; the others give layer indices in removal order and `prune.plan_from_order` keeps the shortest prefix whose
parameters reach the target sparsity. Layer surgery (skipping, merging, dropping layers) is surgery.py's.

LaCo follows the published notebook (github.com/yangyifei729/LaCo @ 8483587, laco_llama-13b.ipynb; line numbers
of the .ipynb file): `merge_layers_return_model` (lines 55-98) adds `theta_k - base` to the base IN PLACE for
q/k/v/o/gate/up/down weights only (lines 62-94), so the base ends equal to the group's last layer and its norm
weights are never touched (LaCo issues #4 and #5 discuss this); `cal_last_hidden_sim` (lines 118-131) is the
cosine of the flattened final hidden states (`hidden_states[-1]`, after the final norm) per prompt, averaged over
prompts; the search starts at `lay = HIGHEST_LAY - MERGE_LAYERS` (line 140), so its first group ends before the
final layer, and moves down by INTERVAL after a merge, by 1 otherwise (lines 160-171). `laco.merge: code` (the
default, what produced the published numbers) reproduces the notebook's merge; `paper` is the paper's Eq. 1,
theta_base + sum_k (theta_k - theta_base). Deviations (norms, the final layer, the similarity's sequences, the stopping rule)
and the source of the `laco:` defaults: docs/deviations.md, "LaCo".
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm
from transformers import PreTrainedModel

from streamline.acquisition.families import base_model, decoder_layers
from streamline.healing.last_layers import reverse_order
from streamline.importance.scores import METRICS
from streamline.numerics import NonFiniteError, nonfinite_cause
from streamline.pruning.plans import check_sparsity, last_n_table, sparsity_denominator
from streamline.pruning.prefix_states import (
    CACHE_BYTES,
    LOGIT_CHUNK,
    anchor_layers,
    anchor_states,
    final_hidden,
    nll_without,
    resumed,
    state_bytes,
)
from streamline.pruning.surgery import LACO_MERGES, keep_layers, layers_skipped, merge_layer_params


def shortgpt_order(table: pd.DataFrame) -> list[int]:
    """Block Influence BI_i = 1 - mean cos(input, output) of layer i; lowest BI first (ties: lower index)."""
    single = table[table["num_layers"] == 1]
    influence = {int(r.start_layer): 1.0 - float(r.score) for r in single.itertuples()}
    return sorted(influence, key=lambda i: (influence[i], i))


def random_order(num_layers: int, seed: int) -> list[int]:
    return torch.randperm(num_layers, generator=torch.Generator().manual_seed(seed)).tolist()


def last_n_order(num_layers: int) -> list[int]:
    """The last layers before the final one: L-2, L-3, ... (a prefix of length n is one window)."""
    return list(range(num_layers - 2, -1, -1))


def finite_nll(value: float, dtype: torch.dtype) -> float:
    """`value`, or NonFiniteError: a NaN NLL would rank as neither better nor worse and give an arbitrary order."""
    if not math.isfinite(value):
        raise NonFiniteError(f"the calibration NLL is {value}, not a finite number ({nonfinite_cause(dtype)})")
    return value


@torch.no_grad()
def calibration_nll(model: PreTrainedModel, batches: list[torch.Tensor]) -> float:
    """Mean next-token negative log-likelihood over the calibration batches."""
    total, count = 0.0, 0
    for batch in batches:
        batch = batch.to(model.device)
        logits = model(batch, use_cache=False).logits[:, :-1].float()
        total += torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1), reduction="sum"
        ).item()
        count += batch[:, 1:].numel()
    return finite_nll(total / count, model.dtype)


def skipped_nll(
    model: PreTrainedModel,
    batches: list[torch.Tensor],
    extras: list[set[int]],
    common: set[int] | frozenset[int] = frozenset(),
    cached: bool = True,
    progress: bool = False,
    desc: str = "candidates",
) -> list[float]:
    """calibration_nll of the model without `common` | extras[k], for each candidate k.

    cached (the searches' default): the layers below each candidate's first skipped layer run once per batch for
    all candidates (prefix_states.nll_without; the LM head in chunks of positions). cached=False: the reference,
    one whole forward pass per candidate (layers_skipped + calibration_nll); tests pin the two to the same orders.
    """
    if cached:
        return [finite_nll(v, model.dtype) for v in nll_without(model, batches, extras, common, LOGIT_CHUNK, progress, desc)]
    values = []
    for extra in tqdm(extras, desc=desc, disable=not progress):
        with layers_skipped(model, set(common) | extra):
            values.append(calibration_nll(model, batches))
    return values


def shortened_ppl_order(
    model: PreTrainedModel, batches: list[torch.Tensor], progress: bool = True, cached: bool = True
) -> list[int]:
    """Kim et al.: remove each layer alone, rank by calibration perplexity (lowest first), one-shot."""
    num_layers = len(decoder_layers(model))
    values = skipped_nll(model, batches, [{i} for i in range(num_layers)], cached=cached, progress=progress,
                         desc="shortened-ppl")
    nll = dict(enumerate(values))
    return sorted(nll, key=lambda i: (nll[i], i))


def sleb_order(
    model: PreTrainedModel,
    batches: list[torch.Tensor],
    enough: Callable[[list[int]], bool],
    progress: bool = True,
    cached: bool = True,
) -> list[int]:
    """SLEB: each round remove the layer whose removal least increases calibration NLL (first/last protected)."""
    num_layers = len(decoder_layers(model))
    removed: list[int] = []
    bar = tqdm(desc="sleb rounds", disable=not progress)
    while not enough(removed):
        candidates = [i for i in range(1, num_layers - 1) if i not in removed]
        if not candidates:
            break
        values = skipped_nll(model, batches, [{i} for i in candidates], frozenset(removed), cached=cached)
        scores = dict(zip(candidates, values))
        removed.append(min(candidates, key=lambda i: (scores[i], i)))
        bar.update(1)
    bar.close()
    return removed


@torch.no_grad()
def final_states(model: PreTrainedModel, batches: list[torch.Tensor]) -> list[torch.Tensor]:
    """Final hidden states after the final norm (the notebook's `hidden_states[-1]`), (B, T, d) per batch."""
    return [base_model(model)(b.to(model.device), use_cache=False).last_hidden_state.float() for b in batches]


def final_state_similarity(reference: list[torch.Tensor], states: list[torch.Tensor]) -> float:
    """The notebook's `cal_last_hidden_sim`: per sequence, the cosine of the flattened (T*d) final states; mean."""
    cos = [torch.nn.functional.cosine_similarity(a.flatten(1), b.flatten(1), dim=-1) for a, b in zip(reference, states)]
    similarity = float(torch.cat(cos).mean())
    if not math.isfinite(similarity):  # NaN > threshold is False: every candidate would silently be rejected
        raise NonFiniteError(
            f"the final-state similarity is {similarity}, not a finite number (the model's final hidden states are "
            "not finite)"
        )
    return similarity


def laco_merges(
    model: PreTrainedModel,
    batches: list[torch.Tensor],
    enough: Callable[[list[int]], bool],
    merge_layers: int = 4,
    threshold: float = 0.65,
    interval: int = 2,
    lowest_layer: int = 1,
    merge: str = "code",
    progress: bool = True,
    cached: bool = True,
    cache_bytes: int = CACHE_BYTES,
) -> list[dict]:
    """LaCo layer collapse, from the top of the model down; mutates `model` (its merged layers).

    At layer l the candidate merges layers l+1..l+C-1 into l (`merge`: the rule of merge_layer_params); the final
    layer is never part of a group (the notebook starts at l = L-1-C with L-1 its last layer, HIGHEST_LAY). It is
    accepted when final_state_similarity to the dense model stays above `threshold`; then l moves down by
    `interval`, else by 1. `enough(layers_removed)` stops the search. If a
    sweep ends short of the target, the next sweep starts again from the top of the (already merged) model; when a
    whole sweep accepts nothing, the most similar candidate of that sweep is accepted, so the target is always
    reached (recorded as `forced`). `enough(removed)` gets the original indices of the layers merged away so far.
    Returns the merges in original layer indices:
    [{"base": l, "merged": [...], "similarity": s, "forced": b, "mode": merge}].

    cached (the default): a merge at l changes no layer below l and the sweep moves down, so each sweep caches,
    for every batch, the states entering its candidate layers (every stride-th one within `cache_bytes`,
    prefix_states.anchor_layers) once, and a candidate runs from the nearest cached layer at or below l.
    cached=False: the reference, the whole model per candidate; tests pin the two to the same merges.
    """
    if merge not in LACO_MERGES:
        raise ValueError(f"laco.merge {merge!r} is unknown; allowed: {', '.join(LACO_MERGES)}")
    reference = final_states(model, batches)
    index = list(range(len(decoder_layers(model))))  # current position -> original layer index
    merges: list[dict] = []
    removed: list[int] = []
    bar = tqdm(desc="laco merges", disable=not progress)
    while not enough(removed):
        best = None
        accepted = False
        layer = len(index) - 1 - merge_layers
        anchors, cache = [], []
        if cached and layer >= lowest_layer:
            anchors = anchor_layers(lowest_layer, layer, state_bytes(model, batches), cache_bytes)
            cache = anchor_states(model, batches, anchors)  # per batch: {layer: state entering it}
        while layer >= lowest_layer and not enough(removed):
            count = min(merge_layers, len(index) - 1 - layer)  # layers in the group; the final one stays out
            if count < 2:
                layer -= 1
                continue
            layers = decoder_layers(model)
            base = layers[layer]
            original = {k: v.detach().clone() for k, v in base.state_dict().items()}
            others = [layers[layer + k].state_dict() for k in range(1, count)]
            base.load_state_dict(merge_layer_params(original, others, merge))
            skipped = set(range(layer + 1, layer + count))
            if cached:  # the layers below `layer` are the sweep's first model's: resume from a cached state
                anchor = max(a for a in anchors if a <= layer)
                states = []
                for batch, entering in zip(batches, cache):
                    with resumed(model, skipped, anchor, entering[anchor]):
                        states.append(final_hidden(model, batch).float())
            else:
                with layers_skipped(model, skipped):
                    states = final_states(model, batches)
            similarity = final_state_similarity(reference, states)
            candidate = (similarity, layer, count)
            if similarity > threshold:
                accepted = True
                removed += _accept(model, index, merges, layer, count, similarity, forced=False, mode=merge)
                bar.update(1)
                layer -= interval
            else:
                base.load_state_dict(original)
                best = max(best, candidate) if best else candidate
                layer -= 1
        if not accepted and not enough(removed):
            if best is None:
                raise ValueError("laco cannot merge any further layers; lower the sparsity or laco.lowest_layer")
            similarity, layer, count = best
            layers = decoder_layers(model)
            others = [layers[layer + k].state_dict() for k in range(1, count)]
            layers[layer].load_state_dict(merge_layer_params(layers[layer].state_dict(), others, merge))
            removed += _accept(model, index, merges, layer, count, similarity, forced=True, mode=merge)
            bar.update(1)
    bar.close()
    return merges


def _accept(
    model: PreTrainedModel,
    index: list[int],
    merges: list[dict],
    layer: int,
    count: int,
    similarity: float,
    forced: bool,
    mode: str,
) -> list[int]:
    """Drop the layers merged into `layer` from the model; returns their original indices."""
    merged = index[layer + 1 : layer + count]
    merges.append({"base": index[layer], "merged": merged, "similarity": similarity, "forced": forced, "mode": mode})
    keep = [i for i in range(len(index)) if not layer < i < layer + count]
    keep_layers(model, keep)
    index[:] = [index[i] for i in keep]
    return merged


PPL_WINDOW_METRIC = "calibration_nll"  # the window table's metric (importance.MOST_REDUNDANT: lowest wins)


def ppl_window_lengths(num_layers: int, enough: Callable[[list[int]], bool]) -> list[int]:
    """The window lengths ppl-window scores: 1..N+1 (at most L-1), N the shortest length at which EVERY window
    satisfies `enough`. A sparsity plan tries lengths from 1 up (prune.plan_pruning) and a replacement adds back
    at most about one layer's parameters, so a plan with a replacement may need length N+1."""
    for n in range(1, num_layers):
        if all(enough(list(range(start, start + n))) for start in range(num_layers - n + 1)):
            return list(range(1, min(n + 1, num_layers - 1) + 1))
    return list(range(1, num_layers))


def ppl_window_table(
    model: PreTrainedModel,
    batches: list[torch.Tensor],
    lengths: list[int],
    progress: bool = True,
    cached: bool = True,
) -> pd.DataFrame:
    """For each length n in `lengths`, the calibration NLL of the model without each window of n consecutive layers
    (start 0..L-n, the windows importance.window_table scores): a window table, metric `calibration_nll`, whose best
    window (importance.best_window) is the one with the lowest NLL. Window [s, s+n) resumes from the cached state
    entering s (skipped_nll; cached=False: one whole forward pass per window)."""
    num_layers = len(decoder_layers(model))
    windows = [(start, n) for n in lengths for start in range(num_layers - n + 1)]
    values = skipped_nll(model, batches, [set(range(start, start + n)) for start, n in windows], cached=cached,
                         progress=progress, desc="ppl-window")
    rows = [(start, n, value, PPL_WINDOW_METRIC) for (start, n), value in zip(windows, values)]
    return pd.DataFrame(rows, columns=["start_layer", "num_layers", "score", "metric"])


def _ppl_window(model: PreTrainedModel, batches: list[torch.Tensor], enough: Callable, settings: dict) -> dict:
    table = ppl_window_table(model, batches, ppl_window_lengths(len(decoder_layers(model)), enough))
    return {"windows": table.to_dict("records")}


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


def _laco(model: PreTrainedModel, batches: list[torch.Tensor], enough: Callable, settings: dict) -> dict[str, Any]:
    merges = laco_merges(model, batches, enough, **settings["laco"])
    return {"merges": merges, "order": [i for m in merges for i in m["merged"]], "laco": settings["laco"]}


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
register(
    Criterion("sleb", "search", lambda model, batches, enough, settings: {"order": sleb_order(model, batches, enough)})
)
register(
    Criterion(
        "shortened-ppl",
        "search",
        lambda model, batches, enough, settings: {"order": shortened_ppl_order(model, batches)},
    )
)
register(Criterion("laco", "search", _laco, settings=("laco",)))
register(Criterion("ppl-window", "search", _ppl_window, finds_window=True))
