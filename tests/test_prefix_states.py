"""The searches that resume from cached prefix states (prefix_states.py, issue 26) against the reference that
recomputes the whole model per candidate (`cached=False`), on a tiny model of every family (test_families.py's
configs: sliding windows shorter than the sequences, Gemma3's alternating layer types, OPT's learned positions).

Tolerance: the states are the model's own numbers (the same layers on the same inputs), so in float32 the only
difference is the LM head run in chunks of positions (here 7, so every batch splits into several ragged chunks):
the summed cross-entropy is added up in another order, a relative change of a few float32 ulps (~1e-7). The
scores must agree to rel 1e-6, and the reference's scores must be at least 1e-4 apart (100x that), so an equal
order is a real check and no tie can flip on rounding noise.
"""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import random_ids
from test_families import ARCHS, LAYERS, SEQ, make_family_model

from streamline.acquisition.families import decoder_layers
from streamline.importance.hidden_states import residual_states
from streamline.pruning import searches
from streamline.pruning.criteria import enough_for_target
from streamline.pruning.prefix_states import anchor_layers, final_hidden, head_nll, resumed
from streamline.pruning.searches import (
    calibration_nll,
    laco_merges,
    ppl_window_table,
    shortened_ppl_order,
    skipped_nll,
    sleb_order,
)
from streamline.pruning.surgery import layers_skipped

CHUNK = 7  # positions per LM-head chunk in these tests: 2 x 23 target positions per batch -> ragged chunks
REL = 1e-6  # see the module docstring
GAP = 1e-4  # the smallest relative gap between two reference scores for an order to count as a check


@pytest.fixture(params=ARCHS)
def arch(request) -> str:
    return request.param


@pytest.fixture()
def model(arch, tokenizer):
    return make_family_model(arch, len(tokenizer))


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    monkeypatch.setattr(searches, "LOGIT_CHUNK", CHUNK)


def data(vocab: int, seed: int = 1) -> list[torch.Tensor]:
    return list(random_ids(vocab, seqs=4, length=SEQ, seed=seed).split(2))


def assert_same_scores(cached: list[float], reference: list[float]) -> None:
    assert cached == pytest.approx(reference, rel=REL)
    ordered = sorted(reference)
    gaps = [(b - a) / abs(b) for a, b in zip(ordered, ordered[1:])]
    assert min(gaps) > GAP, f"reference scores {ordered} are too close to pin an order; pick another seed"


@torch.no_grad()
def test_resumed_runs_only_the_layers_after_the_start(model, tokenizer):
    """Resumed at 2 from the state entering 2, without 3: layers 2, 4, 5 run and the final state is the model's."""
    batch = data(len(tokenizer))[0]
    layers = decoder_layers(model)
    states = residual_states(model, batch)
    calls = []
    handles = [layer.register_forward_pre_hook(lambda m, a, i=i: calls.append(i)) for i, layer in enumerate(layers)]
    try:
        with resumed(model, {3}, 2, states[2]):
            resumed_out = final_hidden(model, batch)
        assert calls == [2, 4, 5]
        with resumed(model, {3}, 2, torch.zeros_like(states[2])):  # the state is really what the layers get
            assert not torch.allclose(final_hidden(model, batch), resumed_out)
        calls.clear()
        with resumed(model, {5}, 5, states[5]):  # nothing after the start: the state is the final one
            last = final_hidden(model, batch)
        assert calls == [4]
    finally:
        for handle in handles:
            handle.remove()
    with layers_skipped(model, {3}):
        torch.testing.assert_close(resumed_out, final_hidden(model, batch), rtol=0, atol=0)
    with layers_skipped(model, {5}):
        torch.testing.assert_close(last, final_hidden(model, batch), rtol=0, atol=0)
    assert len(layers) == LAYERS == model.config.num_hidden_layers  # restored


@torch.no_grad()
@pytest.mark.parametrize("softcap", [None, 2.0])
def test_head_nll_in_chunks_is_calibration_nll(tokenizer, softcap):
    """The chunked LM head + cross-entropy equals the CausalLM's logits (Gemma3's final softcapping included)."""
    model = make_family_model("gemma3", len(tokenizer))
    model.config.final_logit_softcapping = softcap
    batches = data(len(tokenizer))
    total = sum(head_nll(model, final_hidden(model, b), b, chunk=CHUNK) for b in batches)
    count = sum(b[:, 1:].numel() for b in batches)
    assert total / count == pytest.approx(calibration_nll(model, batches), rel=REL)
    if softcap is not None:  # the cap matters for these logits
        model.config.final_logit_softcapping = None
        assert calibration_nll(model, batches) != pytest.approx(total / count, rel=1e-3)


def test_shortened_ppl_and_sleb_scores_and_orders_equal_the_reference(model, tokenizer):
    batches = data(len(tokenizer))
    singles = [{i} for i in range(LAYERS)]
    reference = skipped_nll(model, batches, singles, cached=False)  # shortened-ppl's scores
    assert_same_scores(skipped_nll(model, batches, singles), reference)
    assert shortened_ppl_order(model, batches, progress=False) == sorted(range(LAYERS), key=lambda i: reference[i])
    two_rounds = lambda removed: len(removed) >= 2
    order = sleb_order(model, batches, two_rounds, progress=False, cached=False)
    assert sleb_order(model, batches, two_rounds, progress=False) == order
    # the second round's scores: the current model already lacks the first choice
    rest = [{i} for i in range(1, LAYERS - 1) if i != order[0]]
    common = frozenset(order[:1])
    assert_same_scores(
        skipped_nll(model, batches, rest, common), skipped_nll(model, batches, rest, common, cached=False)
    )


def test_ppl_window_table_equals_the_reference(model, tokenizer):
    batches = data(len(tokenizer))
    lengths = [1, 3, LAYERS - 1]
    cached = ppl_window_table(model, batches, lengths, progress=False)
    reference = ppl_window_table(model, batches, lengths, progress=False, cached=False)
    assert cached[["start_layer", "num_layers", "metric"]].equals(reference[["start_layer", "num_layers", "metric"]])
    for n in lengths:
        rows = reference.num_layers == n
        if rows.sum() > 1:
            assert_same_scores(list(cached.score[rows]), list(reference.score[rows]))
        else:
            assert list(cached.score[rows]) == pytest.approx(list(reference.score[rows]), rel=REL)
        # the same ranking of every window of this length
        ranking = lambda table: list(table[rows].sort_values("score").start_layer)
        assert ranking(cached) == ranking(reference)


def laco_target(model):
    layer_params = [sum(p.numel() for p in layer.parameters()) for layer in decoder_layers(model)]
    return enough_for_target(layer_params, sum(layer_params), 0.3)  # 2 of the 6 layers: two merges


def laco_both(model, batches, **kwargs):
    enough = laco_target(model)
    reference = laco_merges(copy.deepcopy(model), batches, enough, progress=False, cached=False, **kwargs)
    cached_model = copy.deepcopy(model)
    cached = laco_merges(cached_model, batches, enough, progress=False, **kwargs)
    return cached, reference, cached_model


def assert_same_merges(cached: list[dict], reference: list[dict]) -> None:
    assert [{**m, "similarity": None} for m in cached] == [{**m, "similarity": None} for m in reference]
    assert [m["similarity"] for m in cached] == pytest.approx([m["similarity"] for m in reference], rel=REL)


def test_laco_merges_equal_the_reference(model, tokenizer):
    """Forced merges (nothing passes 1.01), then accepted and rejected ones (a threshold just below the best first
    candidate's similarity), from every layer's cached state and from one anchor per sweep (`cache_bytes=1`:
    layer 0's, so every candidate also runs the unchanged layers below it)."""
    batches = data(len(tokenizer))
    settings = dict(merge_layers=2, interval=1, lowest_layer=0)
    cached, forced, _ = laco_both(model, batches, threshold=1.01, **settings)
    assert_same_merges(cached, forced)
    assert all(m["forced"] for m in forced)
    threshold = forced[0]["similarity"] - 1e-3
    cached, reference, _ = laco_both(model, batches, threshold=threshold, **settings)
    assert_same_merges(cached, reference)
    assert not reference[0]["forced"]
    strided = laco_merges(
        copy.deepcopy(model), batches, laco_target(model), threshold=threshold, progress=False, cache_bytes=1,
        **settings,
    )
    assert_same_merges(strided, reference)


def test_anchor_layers_fit_the_cache():
    assert anchor_layers(1, 9, state_bytes=10, cache_bytes=1000) == list(range(1, 10))  # all fit: every layer
    assert anchor_layers(1, 9, state_bytes=10, cache_bytes=30) == [1, 4, 7]  # 9 layers in 3 states: stride 3
    assert anchor_layers(0, 5, state_bytes=10, cache_bytes=1) == [0]  # never fewer than the lowest layer's
