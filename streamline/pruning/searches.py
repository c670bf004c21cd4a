"""The search criteria (SLEB, Shortened LLaMA PPL, LaCo, ppl-window): forward passes of the model in the
`select_layers` job, registered in criteria.py, which imports this module only when a search runs.
Each `*_search(model, batches, enough, settings)` returns the record its criterion's job stores: {"order": layers
in removal order, ...}, or ppl-window's {"windows": a window table's rows}.

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
from collections.abc import Callable
from typing import Any

import pandas as pd
import torch
from tqdm import tqdm
from transformers import PreTrainedModel

from streamline.acquisition.families import base_model, decoder_layers
from streamline.numerics import NonFiniteError, nonfinite_cause
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


def ppl_window_search(
    model: PreTrainedModel, batches: list[torch.Tensor], enough: Callable, settings: dict
) -> dict[str, Any]:
    """ppl-window's record: the window table of the lengths a target may need, as rows."""
    table = ppl_window_table(model, batches, ppl_window_lengths(len(decoder_layers(model)), enough))
    return {"windows": table.to_dict("records")}


def laco_search(
    model: PreTrainedModel, batches: list[torch.Tensor], enough: Callable, settings: dict
) -> dict[str, Any]:
    """LaCo's record: its merges, the layers they remove in order, and the `laco` settings it ran with."""
    merges = laco_merges(model, batches, enough, **settings["laco"])
    return {"merges": merges, "order": [i for m in merges for i in m["merged"]], "laco": settings["laco"]}


def sleb_search(
    model: PreTrainedModel, batches: list[torch.Tensor], enough: Callable, settings: dict
) -> dict[str, Any]:
    """SLEB's record: the layers in removal order."""
    return {"order": sleb_order(model, batches, enough)}


def shortened_ppl_search(
    model: PreTrainedModel, batches: list[torch.Tensor], enough: Callable, settings: dict
) -> dict[str, Any]:
    """Shortened LLaMA (PPL)'s record: the layers in removal order."""
    return {"order": shortened_ppl_order(model, batches)}
