"""Baseline criteria against independent computations on the tiny model."""

from __future__ import annotations

import copy

import pytest
import torch

from streamline.criteria import (
    calibration_nll,
    enough_for_target,
    laco_merges,
    last_n_order,
    merge_layer_params,
    random_order,
    shortened_ppl_order,
    shortgpt_order,
    sleb_order,
)
from streamline.importance import accumulate, window_table


def make_identity(model, idx):
    layer = model.model.layers[idx]
    layer.self_attn.o_proj.weight.data.zero_()
    layer.mlp.down_proj.weight.data.zero_()


def batches(n=2, seq=10, seed=0):
    return list(torch.randint(0, 200, (n * 2, seq), generator=torch.Generator().manual_seed(seed)).split(2))


def nll_with_layers(model, keep, data):
    """Independent path: a deep copy with only `keep` layers, no context manager."""
    clone = copy.deepcopy(model)
    clone.model.layers = torch.nn.ModuleList([clone.model.layers[i] for i in keep])
    clone.config.num_hidden_layers = len(keep)
    return calibration_nll(clone, data)


def test_shortgpt_identity_layer_has_zero_influence_and_goes_first(tiny_model):
    make_identity(tiny_model, 3)
    table = window_table(accumulate(tiny_model, batches(), progress=False).mean("cosine"), "cosine")
    order = shortgpt_order(table)
    assert order[0] == 3
    bi = 1 - table[(table.num_layers == 1) & (table.start_layer == 3)].score.item()
    assert bi == pytest.approx(0.0, abs=1e-6)
    assert sorted(order) == list(range(6))


def test_sleb_first_choice_is_brute_force_argmin(tiny_model):
    data = batches()
    expected = min(range(1, 5), key=lambda i: nll_with_layers(tiny_model, [j for j in range(6) if j != i], data))
    order = sleb_order(tiny_model, data, lambda removed: len(removed) >= 2, progress=False)
    assert order[0] == expected and len(order) == 2 and 0 not in order and 5 not in order
    second = min(
        (i for i in range(1, 5) if i != expected),
        key=lambda i: nll_with_layers(tiny_model, [j for j in range(6) if j not in (expected, i)], data),
    )
    assert order[1] == second


def test_shortened_ppl_ranks_by_single_layer_removal(tiny_model):
    data = batches()
    expected = sorted(range(6), key=lambda i: nll_with_layers(tiny_model, [j for j in range(6) if j != i], data))
    assert shortened_ppl_order(tiny_model, data, progress=False) == expected


def test_random_and_last_n_orders():
    assert random_order(6, 3) == random_order(6, 3) and sorted(random_order(6, 3)) == list(range(6))
    assert random_order(6, 3) != random_order(6, 4)
    assert last_n_order(6)[:3] == [4, 3, 2]


def test_laco_merge_is_rdsc_not_dropping():
    base = {"w": torch.tensor([1.0, 2.0])}
    others = [{"w": torch.tensor([2.0, 2.0])}, {"w": torch.tensor([0.0, 5.0])}]
    merged = merge_layer_params(base, others)
    # theta_base + (theta_1 - theta_base) + (theta_2 - theta_base) = [1+1-1, 2+0+3]
    assert merged["w"].tolist() == [1.0, 5.0]
    assert base["w"].tolist() == [1.0, 2.0]  # the original is untouched


def test_laco_single_merge_equals_rdsc_of_dense_layers(tiny_model):
    dense = copy.deepcopy(tiny_model)
    params = [sum(p.numel() for p in layer.parameters()) for layer in tiny_model.model.layers]
    total = sum(p.numel() for p in tiny_model.parameters())
    # one layer is 9,280 of ~75k parameters: a target of 0.1 needs exactly one merge of two layers
    merges = laco_merges(
        tiny_model, batches(), enough_for_target(params, total, 0.1), merge_layers=2, threshold=0.0, progress=False
    )
    assert len(merges) == 1 and merges[0]["base"] == 4 and merges[0]["merged"] == [5]  # top pair first
    assert len(tiny_model.model.layers) == 5
    expected = merge_layer_params(dense.model.layers[4].state_dict(), [dense.model.layers[5].state_dict()])
    for name, value in tiny_model.model.layers[4].state_dict().items():
        torch.testing.assert_close(value, expected[name])
    assert not torch.equal(tiny_model.model.layers[4].mlp.up_proj.weight, dense.model.layers[4].mlp.up_proj.weight)


def test_laco_threshold_rejects_and_forces_the_most_similar(tiny_model):
    params = [sum(p.numel() for p in layer.parameters()) for layer in tiny_model.model.layers]
    total = sum(p.numel() for p in tiny_model.parameters())
    enough = enough_for_target(params, total, 0.2)
    merges = laco_merges(tiny_model, batches(), enough, merge_layers=2, threshold=1.01, progress=False)
    removed = [i for m in merges for i in m["merged"]]
    assert enough(removed) and all(m["forced"] for m in merges)
    assert len(tiny_model.model.layers) == 6 - len(removed)
