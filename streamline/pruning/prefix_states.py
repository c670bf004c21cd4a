"""Search forward passes that start from cached residual states instead of the embeddings (issue 26).

A candidate of a search changes the model only from some layer s on: SLEB and shortened-ppl skip layer s, ppl-window
skips the window [s, s+n), LaCo merges layers s+1.. into s. The layers below s then produce exactly the states the
current model produces, and every candidate of a round shares them. So the current model runs once per batch,
keeping the state entering each layer (hidden_states.residual_states: h_0 = the embeddings, OPT's learned positions
and Gemma3's scale included), and a candidate runs only from s on (`resumed`): the model's own forward with the
layers below s left out (surgery.layers_skipped, which keeps each remaining layer its own mask, sliding window and
rotary type) and the cached state put in place of the input of the first layer that runs. Everything after the
layers (final norm, OPT's project_out) is the model's own code, so the states are the very numbers the full
recomputation gives; only the LM head differs in that it runs `chunk` positions at a time (`head_nll`), which
keeps the logits' memory flat (chunk x vocab floats instead of B x T x vocab) and changes the NLL by float
rounding only (tests/test_prefix_states.py).

Memory: the states of ONE search batch are cached at a time (`nll_without` loops batches outside candidates):
L x B x T x d in the compute dtype, the same as the importance pass holds (docs/search_cost.md gives the sizes).
LaCo's candidates are accepted one after the other, each on every batch, so its cache holds every batch but only
the states entering every `stride`-th layer (`anchor_layers`), `stride` chosen to stay within `cache_bytes`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
from tqdm import tqdm
from transformers import PreTrainedModel

from streamline.acquisition.families import base_model, decoder_layers
from streamline.importance.hidden_states import residual_states
from streamline.pruning.surgery import layers_skipped

# Positions per LM-head chunk: the logits never exceed chunk x vocab (49k vocab: 63 MB for the compute-dtype logits,
# their float32 copy and the log-softmax) whatever the batch and sequence length. benchmarks/search_cost.py on
# SmolLM2-135M in bf16 (RESULTS.md, "Search methods"): 128 the fastest of 32..1024 on an Intel Xeon with AMX
# (1.56x the whole batch at once; 256: 1.16x), within 5% of the fastest (256) on an AMD EPYC with avx512_bf16.
LOGIT_CHUNK = 128
# LaCo's cache of the states entering its candidate layers, for every search batch: at most this many bytes.
CACHE_BYTES = 4 * 2**30


@contextmanager
def resumed(model: PreTrainedModel, skipped: set[int], start: int, state: torch.Tensor) -> Iterator[None]:
    """The model without the `skipped` layers, resumed at layer `start` from `state`, the state entering `start`.

    Inside, a forward pass of the model runs only the layers at or after `start` that are not skipped: the layers
    below `start` are left out and `state` replaces the input of the first layer that runs (when none runs,
    `state` is the final state: it replaces the output of one layer below `start`, the only one that runs).
    Indices are positions in decoder_layers(model).
    """
    layers = decoder_layers(model)
    rest = [j for j in range(start, len(layers)) if j not in skipped]
    if rest:

        def put_input(_module, args, kwargs):
            if args:
                return (state, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": state}

        runs = rest
        handle = layers[rest[0]].register_forward_pre_hook(put_input, with_kwargs=True)
    else:
        below = [j for j in range(start) if j not in skipped]
        if not below:
            raise ValueError(f"skipping layers {sorted(skipped)} leaves no decoder layer")

        def put_output(_module, _args, output):
            return (state, *output[1:]) if isinstance(output, tuple) else state

        runs = below[-1:]
        handle = layers[below[-1]].register_forward_hook(put_output)
    try:
        with layers_skipped(model, set(range(len(layers))) - set(runs)):
            yield
    finally:
        handle.remove()


@torch.no_grad()
def final_hidden(model: PreTrainedModel, batch: torch.Tensor) -> torch.Tensor:
    """The model's final state after its final norm (base_model's last_hidden_state), (B, T, d)."""
    return base_model(model)(batch.to(model.device), use_cache=False).last_hidden_state


@torch.no_grad()
def head_nll(model: PreTrainedModel, hidden: torch.Tensor, batch: torch.Tensor, chunk: int = LOGIT_CHUNK) -> float:
    """Summed next-token NLL of `batch` from the final states `hidden` (B, T, d), the LM head run on `chunk`
    positions at a time. The logits are the CausalLM's: lm_head, then Gemma's final_logit_softcapping where the
    config sets it (in the compute dtype, as the model computes them), in float32 for the cross-entropy."""
    head = model.get_output_embeddings()
    cap = getattr(model.config, "final_logit_softcapping", None)
    inputs = hidden[:, :-1].reshape(-1, hidden.shape[-1]).to(head.weight.device)  # (B*(T-1), d)
    targets = batch[:, 1:].reshape(-1).to(head.weight.device)  # (B*(T-1),)
    total = torch.zeros((), dtype=torch.float64, device=head.weight.device)
    for lo in range(0, inputs.shape[0], chunk):
        logits = head(inputs[lo : lo + chunk])  # (chunk, vocab)
        if cap is not None:
            logits = torch.tanh(logits / cap) * cap
        total += torch.nn.functional.cross_entropy(logits.float(), targets[lo : lo + chunk], reduction="sum")
    return float(total)


@torch.no_grad()
def prefix_pass(
    model: PreTrainedModel, batch: torch.Tensor, common: set[int], starts: Iterable[int]
) -> dict[int, torch.Tensor]:
    """One pass of the model without the `common` layers over `batch`, stopped at the highest of `starts`:
    {s: the state entering layer s} for each start s (original indices, none of them in `common`), (B, T, d)."""
    kept = [i for i in range(len(decoder_layers(model))) if i not in common]
    position = {layer: k for k, layer in enumerate(kept)}  # original index -> index in the current model
    starts = set(starts)
    with layers_skipped(model, common):
        states = residual_states(model, batch, upto=max(position[s] for s in starts))  # h_0 ..
    return {s: states[position[s]] for s in starts}


@torch.no_grad()
def resumed_nll(
    model: PreTrainedModel,
    batch: torch.Tensor,
    skipped: set[int],
    start: int,
    state: torch.Tensor,
    chunk: int = LOGIT_CHUNK,
) -> float:
    """Summed next-token NLL of `batch` under the model without `skipped`, resumed at `start` from `state`."""
    with resumed(model, skipped, start, state):
        hidden = final_hidden(model, batch)
    return head_nll(model, hidden, batch, chunk)


@torch.no_grad()
def nll_without(
    model: PreTrainedModel,
    batches: list[torch.Tensor],
    extras: list[set[int]],
    common: Iterable[int] = (),
    chunk: int = LOGIT_CHUNK,
    progress: bool = False,
    desc: str = "candidates",
) -> list[float]:
    """Mean next-token NLL over `batches` of the model without `common` | extras[k], for each k.

    The current model (without `common`) runs once per batch up to the state entering the highest first layer
    of an extra set (`prefix_pass`); candidate k then resumes at min(extras[k]) from that state (`resumed_nll`).
    Only one batch's states are held at a time. Equals criteria.calibration_nll under layers_skipped up to float
    rounding in the chunked LM head.
    """
    common = set(common)
    if any(not extra or extra & common for extra in extras):
        raise ValueError("each candidate skips at least one layer, none of them already left out")
    starts = [min(extra) for extra in extras]
    totals = [0.0] * len(extras)
    count = 0
    bar = tqdm(total=len(extras) * len(batches), desc=desc, disable=not progress)
    for batch in batches:
        states = prefix_pass(model, batch, common, starts)
        for k, (extra, start) in enumerate(zip(extras, starts)):
            totals[k] += resumed_nll(model, batch, common | extra, start, states[start], chunk)
            bar.update(1)
        count += batch[:, 1:].numel()
        del states
    bar.close()
    return [total / count for total in totals]


def anchor_layers(lowest: int, highest: int, state_bytes: int, cache_bytes: int = CACHE_BYTES) -> list[int]:
    """Layers lowest, lowest + stride, ... <= highest whose entering states fit `cache_bytes` (each `state_bytes`):
    stride 1 (every layer) when they all fit, at least the one state of `lowest`."""
    count = highest - lowest + 1
    fit = max(1, cache_bytes // max(1, state_bytes))
    stride = max(1, math.ceil(count / fit))
    return list(range(lowest, highest + 1, stride))


@torch.no_grad()
def anchor_states(
    model: PreTrainedModel, batches: list[torch.Tensor], anchors: list[int]
) -> list[dict[int, torch.Tensor]]:
    """Per batch, {layer: the state entering it} for the `anchors` (positions in the current model)."""
    cached = []
    for batch in batches:
        states = residual_states(model, batch, upto=max(anchors))
        cached.append({a: states[a] for a in anchors})
        del states
    return cached


def state_bytes(model: PreTrainedModel, batches: list[torch.Tensor]) -> int:
    """Bytes of one residual state over all `batches` (samples x T x d in the compute dtype)."""
    tokens = sum(b.numel() for b in batches)
    return tokens * model.config.hidden_size * next(model.parameters()).element_size()
