import pytest
import torch

from streamline.importance import window_table
import copy

from streamline.prune import apply_plan, keep_layers, last_n_table, plan_from_order, plan_pruning


def uniform_manifest(num_layers, hidden, inter, heads, kv_heads, vocab, tied):
    head_dim = hidden // heads
    attn = 2 * hidden * hidden + 2 * hidden * kv_heads * head_dim
    mlp = 3 * hidden * inter
    layer = attn + mlp + 2 * hidden
    total = num_layers * layer + vocab * hidden * (1 if tied else 2) + hidden
    return {
        "parameters": total,
        "hidden_size": hidden,
        "layer_params": [layer] * num_layers,
        "mlp_params": [mlp + hidden] * num_layers,
    }


def table_preferring(num_layers, start):
    """Cosine scores where every window that starts at `start` is the most redundant."""
    mean = torch.full((num_layers + 1, num_layers + 1), 0.5)
    mean[start, :] = 0.9
    return window_table(mean, "cosine")


# Hand computation, Llama-2-7B shapes: layer = 4*4096^2 + 3*4096*11008 + 2*4096 = 202,383,360;
# total = 32 * layer + 2 * 32000 * 4096 + 4096 = 6,738,415,616.
LLAMA2_7B = uniform_manifest(32, 4096, 11008, 32, 32, 32000, tied=False)
# SmolLM2-135M shapes: layer = 3,540,096; mlp block = 2,654,784; total = 134,515,008.
SMOLLM2 = uniform_manifest(30, 576, 1536, 9, 3, 49152, tied=True)


def test_manifests_match_hand_numbers():
    assert LLAMA2_7B["layer_params"][0] == 202_383_360 and LLAMA2_7B["parameters"] == 6_738_415_616
    assert SMOLLM2["layer_params"][0] == 3_540_096 and SMOLLM2["parameters"] == 134_515_008


@pytest.mark.parametrize(
    "manifest,replacement,n,actual",
    [
        # 0.25 * 6,738,415,616 / 202,383,360 = 8.32 -> 9 layers; 9 * 202,383,360 / total = 0.27031
        (LLAMA2_7B, "none", 9, 1_821_450_240 / 6_738_415_616),
        # 9 layers minus the FFN block (135,270,400) = 1,686,179,840 -> 0.250234 >= 0.25
        (LLAMA2_7B, "ffn", 9, 1_686_179_840 / 6_738_415_616),
        # SmolLM2: 9.5 layers -> 10; with an FFN 10 layers give 0.2434 < 0.25 -> 11
        (SMOLLM2, "none", 10, 35_400_960 / 134_515_008),
        (SMOLLM2, "ffn", 11, (38_941_056 - 2_654_784) / 134_515_008),
        (SMOLLM2, "layer", 11, (38_941_056 - 3_540_096) / 134_515_008),
        (SMOLLM2, "linear", 10, (35_400_960 - 576 * 576) / 134_515_008),
    ],
)
def test_sparsity_to_layers(manifest, replacement, n, actual):
    num_layers = len(manifest["layer_params"])
    plan = plan_pruning(table_preferring(num_layers, 3), manifest, 0.25, replacement)
    assert plan["num_layers_removed"] == n
    assert plan["actual_sparsity"] == pytest.approx(actual, rel=1e-12)
    assert plan["start_layer"] == 3 and plan["removed_layers"] == list(range(3, 3 + n))
    assert plan["params_after"] == manifest["parameters"] - n * manifest["layer_params"][0] + plan["params_replacement"]


def test_highest_cosine_window_is_removed():
    plan = plan_pruning(table_preferring(30, 17), SMOLLM2, 0.1, "none")
    assert plan["start_layer"] == 17 and plan["window_score"] == pytest.approx(0.9)


@pytest.mark.parametrize("bad", [0.0, 1.0, 1.5, -0.2])
def test_sparsity_outside_open_interval(bad):
    with pytest.raises(ValueError, match=rf"sparsity {bad} is outside the open interval \(0, 1\)"):
        plan_pruning(table_preferring(30, 0), SMOLLM2, bad, "none")


def test_sparsity_needing_too_many_layers():
    with pytest.raises(ValueError, match="sparsity 0.9 needs more layers than the model has"):
        plan_pruning(table_preferring(30, 0), SMOLLM2, 0.9, "none")


def test_unknown_healing():
    with pytest.raises(
        ValueError, match="healing 'conv' is unknown; allowed: none, linear, ffn, swiglu, layer, lora, lm-loss"
    ):
        plan_pruning(table_preferring(30, 0), SMOLLM2, 0.2, "conv")


def test_plan_from_order_takes_the_shortest_prefix():
    # SmolLM2: 0.25 needs ceil(0.25 x 134,515,008 / 3,540,096) = 10 layers, in the given (scattered) order
    order = [29, 3, 7, 11, 2, 5, 17, 19, 23, 13, 8, 1]
    plan = plan_from_order(order, SMOLLM2, 0.25, "none")
    assert plan["removal_order"] == order[:10] and plan["removed_layers"] == sorted(order[:10])
    assert plan["actual_sparsity"] == pytest.approx(35_400_960 / 134_515_008)
    assert plan["start_layer"] is None and plan["params_replacement"] == 0
    assert plan_from_order(order, SMOLLM2, 0.25, "lora")["params_after"] == 134_515_008 - 35_400_960
    with pytest.raises(ValueError, match="healing 'ffn' needs one window of consecutive layers"):
        plan_from_order(order, SMOLLM2, 0.25, "ffn")
    with pytest.raises(ValueError, match="sparsity 0.5 needs more layers than the method's order covers"):
        plan_from_order(order, SMOLLM2, 0.5, "none")


def test_plan_from_merges_ends_on_a_whole_merge():
    merges = [
        {"base": 25, "merged": [26, 27, 28]},
        {"base": 21, "merged": [22, 23, 24]},
        {"base": 17, "merged": [18, 19, 20]},
        {"base": 13, "merged": [14, 15, 16]},
    ]
    order = [i for m in merges for i in m["merged"]]
    # 0.25 needs 10 layers: 3 merges remove 9 (0.237), so a 4th merge is taken -> 12 layers
    plan = plan_from_order(order, SMOLLM2, 0.25, "none", merges)
    assert plan["num_layers_removed"] == 12 and plan["merges"] == merges
    assert len(plan_from_order(order, SMOLLM2, 0.2, "none", merges)["merges"]) == 3  # 9 layers: 0.2369 >= 0.2


def test_last_n_removes_the_layers_before_the_final_one():
    plan = plan_pruning(last_n_table(30), SMOLLM2, 0.25, "ffn")
    assert plan["removed_layers"] == list(range(18, 29))  # 11 layers with an ffn, ending at layer 28


def test_apply_plan_replays_laco_merges(tiny_model):
    from streamline.criteria import merge_layer_params

    dense = [layer.state_dict() for layer in copy.deepcopy(tiny_model).model.layers]
    plan = {"removed_layers": [4, 5], "merges": [{"base": 4, "merged": [5]}, {"base": 3, "merged": [4]}]}
    apply_plan(tiny_model, plan)
    first = merge_layer_params(dense[4], [dense[5]])
    expected = merge_layer_params(dense[3], [first])
    assert len(tiny_model.model.layers) == 4
    for name, value in tiny_model.model.layers[3].state_dict().items():
        torch.testing.assert_close(value, expected[name])


def test_keep_layers_renumbers_and_generates(tiny_model, tokenizer):
    tiny_model.config.layer_types = ["full_attention"] * 6
    keep_layers(tiny_model, [0, 1, 4, 5])
    assert tiny_model.config.num_hidden_layers == 4
    assert tiny_model.config.layer_types == ["full_attention"] * 4
    assert [layer.self_attn.layer_idx for layer in tiny_model.model.layers] == [0, 1, 2, 3]
    ids = torch.randint(0, 200, (1, 6))
    with torch.no_grad():
        out = tiny_model.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=0)
        # Cached decoding equals recomputing the whole sequence without a cache.
        full = tiny_model(out[:, :-1], use_cache=False).logits[:, -1].argmax(-1)
    assert out.shape == (1, 11)
    assert int(full) == int(out[0, -1])
