"""Baseline criteria against independent computations on the tiny model."""

from __future__ import annotations

import copy

import pytest
import torch

from streamline.importance.scores import accumulate
from streamline.importance.windows import window_table
from streamline.pruning.criteria import enough_for_target, last_n_order, random_order, shortgpt_order
from streamline.pruning.searches import (
    calibration_nll,
    final_state_similarity,
    laco_merges,
    shortened_ppl_order,
    sleb_order,
)
from streamline.pruning.surgery import merge_layer_params


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


# A 3-layer toy group: base (layer l), then l+1 and l+2, with one attention, one MLP and one norm weight each.
TOY = [
    {"self_attn.q_proj.weight": torch.tensor([1.0, 2.0]), "mlp.down_proj.weight": torch.tensor([[0.5, -1.0]]),
     "input_layernorm.weight": torch.tensor([1.0, 1.0])},
    {"self_attn.q_proj.weight": torch.tensor([3.0, 5.0]), "mlp.down_proj.weight": torch.tensor([[2.0, 0.0]]),
     "input_layernorm.weight": torch.tensor([2.0, 2.0])},
    {"self_attn.q_proj.weight": torch.tensor([4.0, 0.0]), "mlp.down_proj.weight": torch.tensor([[-1.0, 3.0]]),
     "input_layernorm.weight": torch.tensor([5.0, 5.0])},
]


def test_laco_merge_of_a_three_layer_toy_by_hand():
    base, others = TOY[0], TOY[1:]
    code = merge_layer_params(base, others, "code")
    # the notebook's in-place base += theta_k - base: after k=1 base = theta_1, after k=2 base = theta_2
    assert code["self_attn.q_proj.weight"].tolist() == [4.0, 0.0]
    assert code["mlp.down_proj.weight"].tolist() == [[-1.0, 3.0]]
    paper = merge_layer_params(base, others, "paper")
    # Eq. 1: theta_0 + (theta_1 - theta_0) + (theta_2 - theta_0) = [1+2+3, 2+3-2] and [[0.5+1.5-1.5, -1+1+4]]
    assert paper["self_attn.q_proj.weight"].tolist() == [6.0, 3.0]
    assert paper["mlp.down_proj.weight"].tolist() == [[0.5, 4.0]]
    # norms are never difference-summed (that would give [1+1+4, ...] = [6, 6]): the base's stay
    assert code["input_layernorm.weight"].tolist() == paper["input_layernorm.weight"].tolist() == [1.0, 1.0]
    assert base["self_attn.q_proj.weight"].tolist() == [1.0, 2.0]  # the inputs are untouched
    with pytest.raises(ValueError, match="laco.merge 'mean' is unknown; allowed: code, paper"):
        merge_layer_params(base, others, "mean")


@pytest.mark.parametrize("mode", ["code", "paper"])
def test_apply_plan_merges_a_three_layer_group_element_wise(tokenizer, mode):
    """Layers 0-2 of a 4-layer model collapse into layer 0; checked against each dense tensor by hand."""
    from conftest import make_model

    from streamline.pruning.surgery import apply_plan

    model = make_model(len(tokenizer), num_layers=4)
    dense = [{k: v.clone() for k, v in layer.state_dict().items()} for layer in model.model.layers]
    apply_plan(model, {"removed_layers": [1, 2], "merges": [{"base": 0, "merged": [1, 2], "mode": mode}]})
    assert len(model.model.layers) == 2
    merged = model.model.layers[0].state_dict()
    for name, value in merged.items():
        if "norm" in name:
            expected = dense[0][name]
        elif mode == "code":
            expected = dense[2][name]
        else:
            expected = dense[0][name] + (dense[1][name] - dense[0][name]) + (dense[2][name] - dense[0][name])
        torch.testing.assert_close(value, expected, rtol=0, atol=1e-6)
    for name, value in model.model.layers[1].state_dict().items():  # the final layer is untouched
        assert torch.equal(value, dense[3][name])


def test_laco_similarity_is_the_cosine_of_flattened_final_states():
    reference = [torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])]  # one sequence, 2 tokens, d = 2
    states = [torch.tensor([[[2.0, 0.0], [0.0, -1.0]]])]
    # per token the cosines are 1 and -1 (mean 0); flattened: (1,0,0,1).(2,0,0,-1) / (sqrt 2 sqrt 5) = 1/sqrt 10
    assert final_state_similarity(reference, states) == pytest.approx(10**-0.5)


@pytest.mark.parametrize("mode", ["code", "paper"])
def test_laco_single_merge_never_includes_the_final_layer(tiny_model, mode):
    dense = copy.deepcopy(tiny_model)
    params = [sum(p.numel() for p in layer.parameters()) for layer in tiny_model.model.layers]
    total = sum(p.numel() for p in tiny_model.parameters())
    # one layer is 9,280 of ~75k parameters: a target of 0.1 needs exactly one merge of two layers
    merges = laco_merges(
        tiny_model,
        batches(),
        enough_for_target(params, total, 0.1),
        merge_layers=2,
        threshold=0.0,
        merge=mode,
        progress=False,
    )
    # the top group is 3..4: layer 5 (the final one) stays out
    assert merges == [{"base": 3, "merged": [4], "similarity": merges[0]["similarity"], "forced": False, "mode": mode}]
    assert len(tiny_model.model.layers) == 5
    expected = merge_layer_params(dense.model.layers[3].state_dict(), [dense.model.layers[4].state_dict()], mode)
    for name, value in tiny_model.model.layers[3].state_dict().items():
        torch.testing.assert_close(value, expected[name])
    for name, value in tiny_model.model.layers[4].state_dict().items():
        assert torch.equal(value, dense.model.layers[5].state_dict()[name])


def test_laco_never_merges_the_final_layer_however_far_it_goes(tiny_model):
    dense_last = {k: v.clone() for k, v in tiny_model.model.layers[5].state_dict().items()}
    params = [sum(p.numel() for p in layer.parameters()) for layer in tiny_model.model.layers]
    total = sum(p.numel() for p in tiny_model.parameters())
    merges = laco_merges(
        tiny_model, batches(), enough_for_target(params, total, 0.45), merge_layers=3, threshold=0.0,
        interval=1, lowest_layer=0, progress=False,
    )
    merged_away = [i for m in merges for i in m["merged"]]
    assert 5 not in merged_away and all(m["base"] != 5 for m in merges) and len(merged_away) >= 4
    for name, value in tiny_model.model.layers[-1].state_dict().items():
        assert torch.equal(value, dense_last[name])


def test_laco_threshold_rejects_and_forces_the_most_similar(tiny_model):
    params = [sum(p.numel() for p in layer.parameters()) for layer in tiny_model.model.layers]
    total = sum(p.numel() for p in tiny_model.parameters())
    enough = enough_for_target(params, total, 0.2)
    merges = laco_merges(tiny_model, batches(), enough, merge_layers=2, threshold=1.01, progress=False)
    removed = [i for m in merges for i in m["merged"]]
    assert enough(removed) and all(m["forced"] for m in merges)
    assert len(tiny_model.model.layers) == 6 - len(removed)
