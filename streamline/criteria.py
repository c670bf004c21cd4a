"""Baseline layer-pruning criteria: the order in which each method removes layers.

Every criterion returns layer indices in removal order; `prune.plan_from_order` keeps the shortest prefix whose
parameters reach the target sparsity. Window methods (streamline, gromov) go through `prune.plan_pruning`.

LaCo follows the published notebook (github.com/yangyifei729/LaCo @ 8483587, laco_llama-13b.ipynb; line numbers
of the .ipynb file): `merge_layers_return_model` (lines 55-98) adds `theta_k - base` to the base IN PLACE for
q/k/v/o/gate/up/down weights only (lines 62-94), so the base ends equal to the group's last layer and its norm
weights are never touched (LaCo issues #4 and #5 discuss this); `cal_last_hidden_sim` (lines 118-131) is the
cosine of the flattened final hidden states (`hidden_states[-1]`, after the final norm) per prompt, averaged over
prompts; the search starts at `lay = HIGHEST_LAY - MERGE_LAYERS` (line 140), so its first group ends before the
final layer, and moves down by INTERVAL after a merge, by 1 otherwise (lines 160-171). `laco.merge: code` (the
default, what produced the published numbers) reproduces the notebook's merge; `paper` is the paper's Eq. 1,
theta_base + sum_k (theta_k - theta_base). Deliberate deviations:
- norms are never difference-summed in either mode, and every non-norm parameter of the layer follows the rule
  (for Llama-family layers exactly the notebook's seven projection weights; a bias, where a model has one, too);
- the final layer is never merged: the notebook's clamp `min(merge_layer_num, len(layers) - base - 1)` (line 57)
  lets a later group reach the then-final layer; here a group always ends before it;
- the similarity runs over the `search:` calibration windows (samples x seq_len tokens of `calibration.dataset`),
  not the notebook's five hand-picked Wikipedia prefixes (lines 144-148);
- the search stops once the merged-away layers reach the largest configured sparsity, and if a whole sweep
  accepts nothing the most similar candidate is merged and marked `forced` (the notebook just stops).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pandas as pd
import torch
from transformers import PreTrainedModel
from tqdm import tqdm

from streamline.hidden_states import decoder_layers

# Methods that remove one window of consecutive layers (a trained replacement can take its place).
WINDOW_METHODS = ("streamline", "gromov", "last-n")
TABLE_METHODS = ("shortgpt", "random")  # orders from the importance table / a seed alone
SEARCH_METHODS = ("sleb", "shortened-ppl", "laco")  # orders that need forward passes of the model
METHODS = WINDOW_METHODS + TABLE_METHODS + SEARCH_METHODS
# Importance table each table/window method reads.
METHOD_METRIC = {
    "streamline": "cosine",
    "gromov": "angular_last",
    "last-n": "cosine",
    "shortgpt": "cosine",
    "random": "cosine",
}


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


@contextmanager
def layers_skipped(model: PreTrainedModel, skipped: set[int]) -> Iterator[None]:
    """Run the model without the `skipped` layers (no cache), restoring it afterwards."""
    layers = decoder_layers(model)
    old_count = model.config.num_hidden_layers
    model.model.layers = torch.nn.ModuleList([layer for i, layer in enumerate(layers) if i not in skipped])
    model.config.num_hidden_layers = len(model.model.layers)
    try:
        yield
    finally:
        model.model.layers = layers
        model.config.num_hidden_layers = old_count


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
    return total / count


def shortened_ppl_order(model: PreTrainedModel, batches: list[torch.Tensor], progress: bool = True) -> list[int]:
    """Kim et al.: remove each layer alone, rank by calibration perplexity (lowest first), one-shot."""
    num_layers = len(decoder_layers(model))
    nll = {}
    for i in tqdm(range(num_layers), desc="shortened-ppl", disable=not progress):
        with layers_skipped(model, {i}):
            nll[i] = calibration_nll(model, batches)
    return sorted(nll, key=lambda i: (nll[i], i))


def sleb_order(
    model: PreTrainedModel, batches: list[torch.Tensor], enough: Callable[[list[int]], bool], progress: bool = True
) -> list[int]:
    """SLEB: each round remove the layer whose removal least increases calibration NLL (first/last protected)."""
    num_layers = len(decoder_layers(model))
    removed: list[int] = []
    bar = tqdm(desc="sleb rounds", disable=not progress)
    while not enough(removed):
        candidates = [i for i in range(1, num_layers - 1) if i not in removed]
        if not candidates:
            break
        scores = {}
        for i in candidates:
            with layers_skipped(model, set(removed) | {i}):
                scores[i] = calibration_nll(model, batches)
        removed.append(min(candidates, key=lambda i: (scores[i], i)))
        bar.update(1)
    bar.close()
    return removed


LACO_MERGES = ("code", "paper")  # schema `laco.merge`; the default `code` is what the published numbers used


def is_norm_param(name: str) -> bool:
    """A normalisation weight of a decoder layer (input/post-attention layernorm, q/k norms, ...)."""
    return any("norm" in part for part in name.split(".")[:-1])


def merge_layer_params(
    base: dict[str, torch.Tensor], others: list[dict[str, torch.Tensor]], mode: str
) -> dict[str, torch.Tensor]:
    """LaCo's merge of `others` (in layer order) into `base`; returns new tensors, inputs untouched.

    `paper` (Eq. 1, Reserving-Differences-while-Seeking-Common): theta_base + sum_k (theta_k - theta_base),
    from the ORIGINAL base. `code` (the published notebook, laco_llama-13b.ipynb `merge_layers_return_model`):
    its in-place `base += theta_k - base` leaves base = theta_last, so every merged weight ends equal to the
    group's last layer's. In both modes the norm weights stay the base layer's: the notebook never touches them,
    and a difference sum of norm gains has no counterpart in the paper's attention/MLP merge.
    """
    if mode not in LACO_MERGES:
        raise ValueError(f"laco.merge {mode!r} is unknown; allowed: {', '.join(LACO_MERGES)}")
    merged = {}
    for name, value in base.items():
        if is_norm_param(name) or not others:
            merged[name] = value.detach().clone()
        elif mode == "code":
            merged[name] = others[-1][name].detach().clone().to(value.dtype)
        else:
            acc = value.detach().clone().float()
            for other in others:
                acc += other[name].float() - value.float()
            merged[name] = acc.to(value.dtype)
    return merged


@torch.no_grad()
def final_states(model: PreTrainedModel, batches: list[torch.Tensor]) -> list[torch.Tensor]:
    """Final hidden states after the final norm (the notebook's `hidden_states[-1]`), (B, T, d) per batch."""
    return [model.model(b.to(model.device), use_cache=False).last_hidden_state.float() for b in batches]


def final_state_similarity(reference: list[torch.Tensor], states: list[torch.Tensor]) -> float:
    """The notebook's `cal_last_hidden_sim`: per sequence, the cosine of the flattened (T*d) final states; mean."""
    cos = [torch.nn.functional.cosine_similarity(a.flatten(1), b.flatten(1), dim=-1) for a, b in zip(reference, states)]
    return float(torch.cat(cos).mean())


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
            with layers_skipped(model, skipped):
                similarity = final_state_similarity(reference, final_states(model, batches))
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
    from streamline.prune import keep_layers

    merged = index[layer + 1 : layer + count]
    merges.append({"base": index[layer], "merged": merged, "similarity": similarity, "forced": forced, "mode": mode})
    keep = [i for i in range(len(index)) if not layer < i < layer + count]
    keep_layers(model, keep)
    index[:] = [index[i] for i in keep]
    return merged


def enough_for_target(layer_params: list[int], total: int, target: float) -> Callable[[list[int]], bool]:
    """`enough(removed)`: do the removed layers' parameters reach `target` x the dense total?"""

    def enough(removed: list[int]) -> bool:
        return bool(removed) and sum(layer_params[i] for i in removed) / total >= target

    return enough
