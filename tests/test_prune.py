import copy
import re
import subprocess

import pytest
import torch
import yaml
from conftest import MIRROR, make_model, make_tokenizer, save_tiny_checkpoint, snakemake_cmd

from streamline.acquisition.models import build_manifest
from streamline.healing.kinds import HEALING_KINDS
from streamline.importance.windows import window_table
from streamline.pruning.criteria import search_enough
from streamline.pruning.plans import (
    last_n_table,
    plan_from_order,
    plan_layers,
    plan_order_layers,
    plan_pruning,
    sparsity_denominator,
)
from streamline.pruning.surgery import apply_plan, keep_layers


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
        # 9 layers minus the SwiGLU block (135,270,400) = 1,686,179,840 -> 0.250234 >= 0.25
        (LLAMA2_7B, "swiglu", 9, 1_686_179_840 / 6_738_415_616),
        # SmolLM2: 9.5 layers -> 10; with a SwiGLU block 10 layers give 0.2434 < 0.25 -> 11
        (SMOLLM2, "none", 10, 35_400_960 / 134_515_008),
        (SMOLLM2, "swiglu", 11, (38_941_056 - 2_654_784) / 134_515_008),
        (SMOLLM2, "layer", 11, (38_941_056 - 3_540_096) / 134_515_008),
        (SMOLLM2, "linear", 10, (35_400_960 - 576 * 576) / 134_515_008),
    ],
)
def test_sparsity_to_layers(manifest, replacement, n, actual):
    num_layers = len(manifest["layer_params"])
    plan = plan_pruning(table_preferring(num_layers, 3), manifest, 0.25, replacement, "all")
    assert plan["num_layers_removed"] == n
    assert plan["actual_sparsity"] == pytest.approx(actual, rel=1e-12)
    assert plan["start_layer"] == 3 and plan["removed_layers"] == list(range(3, 3 + n))
    assert plan["params_after"] == manifest["parameters"] - n * manifest["layer_params"][0] + plan["params_replacement"]


def test_highest_cosine_window_is_removed():
    plan = plan_pruning(table_preferring(30, 17), SMOLLM2, 0.1, "none", "all")
    assert plan["start_layer"] == 17 and plan["window_score"] == pytest.approx(0.9)


@pytest.mark.parametrize("bad", [0.0, 1.0, 1.5, -0.2])
def test_sparsity_outside_open_interval(bad):
    with pytest.raises(ValueError, match=rf"sparsity {bad} is outside the open interval \(0, 1\)"):
        plan_pruning(table_preferring(30, 0), SMOLLM2, bad, "none", "all")


def test_sparsity_needing_too_many_layers():
    with pytest.raises(ValueError, match="sparsity 0.9 needs more layers than the model has"):
        plan_pruning(table_preferring(30, 0), SMOLLM2, 0.9, "none", "all")


def test_unknown_healing():
    allowed = re.escape(", ".join(HEALING_KINDS))
    with pytest.raises(ValueError, match=f"healing 'conv' is unknown; allowed: none, linear, ffn, .*{allowed[-20:]}$"):
        plan_pruning(table_preferring(30, 0), SMOLLM2, 0.2, "conv", "all")


def test_plan_from_order_takes_the_shortest_prefix():
    # SmolLM2: 0.25 needs ceil(0.25 x 134,515,008 / 3,540,096) = 10 layers, in the given (scattered) order
    order = [29, 3, 7, 11, 2, 5, 17, 19, 23, 13, 8, 1]
    plan = plan_from_order(order, SMOLLM2, 0.25, "none", "all")
    assert plan["removal_order"] == order[:10] and plan["removed_layers"] == sorted(order[:10])
    assert plan["actual_sparsity"] == pytest.approx(35_400_960 / 134_515_008)
    assert plan["start_layer"] is None and plan["params_replacement"] == 0
    assert plan_from_order(order, SMOLLM2, 0.25, "lora", "all")["params_after"] == 134_515_008 - 35_400_960
    with pytest.raises(ValueError, match="healing 'ffn' needs one window of consecutive layers"):
        plan_from_order(order, SMOLLM2, 0.25, "ffn", "all")
    with pytest.raises(ValueError, match="sparsity 0.5 needs more layers than the method's order covers"):
        plan_from_order(order, SMOLLM2, 0.5, "none", "all")


def test_plan_from_merges_ends_on_a_whole_merge():
    merges = [
        {"base": 25, "merged": [26, 27, 28]},
        {"base": 21, "merged": [22, 23, 24]},
        {"base": 17, "merged": [18, 19, 20]},
        {"base": 13, "merged": [14, 15, 16]},
    ]
    order = [i for m in merges for i in m["merged"]]
    # 0.25 needs 10 layers: 3 merges remove 9 (0.237), so a 4th merge is taken -> 12 layers
    plan = plan_from_order(order, SMOLLM2, 0.25, "none", "all", merges)
    assert plan["num_layers_removed"] == 12 and plan["merges"] == merges
    assert len(plan_from_order(order, SMOLLM2, 0.2, "none", "all", merges)["merges"]) == 3  # 9 layers: 0.2369 >= 0.2


def test_last_n_removes_the_layers_before_the_final_one():
    plan = plan_pruning(last_n_table(30), SMOLLM2, 0.25, "swiglu", "all")
    assert plan["removed_layers"] == list(range(18, 29))  # 11 layers with a swiglu block, ending at layer 28


def test_apply_plan_replays_laco_merges(tiny_model):
    from streamline.pruning.surgery import merge_layer_params

    dense = [layer.state_dict() for layer in copy.deepcopy(tiny_model).model.layers]
    plan = {"removed_layers": [4, 5], "merges": [{"base": 4, "merged": [5]}, {"base": 3, "merged": [4]}]}
    apply_plan(tiny_model, plan)
    first = merge_layer_params(dense[4], [dense[5]], "paper")  # a plan without `mode` predates laco.merge
    expected = merge_layer_params(dense[3], [first], "paper")
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


# sparsity_of: layers counts only decoder-layer parameters. SmolLM2: 30 x 3,540,096 = 106,202,880 (the other
# 28,312,128 are the tied embedding and final norm); Llama-2-7B: 32 x 202,383,360 = 6,476,267,520.
@pytest.mark.parametrize(
    "manifest,replacement,n,actual",
    [
        # 0.25 x 106,202,880 = 26,550,720 = 7.5 layers -> 8 (10 when counted over all parameters)
        (SMOLLM2, "none", 8, 8 * 3_540_096 / 106_202_880),
        # with the SwiGLU block back: (n x 3,540,096 - 2,654,784) >= 26,550,720 -> n >= 8.25 -> 9
        (SMOLLM2, "swiglu", 9, (9 * 3_540_096 - 2_654_784) / 106_202_880),
        # Llama-2-7B: exactly 8 of 32 layers (9 over all parameters)
        (LLAMA2_7B, "none", 8, 0.25),
    ],
)
def test_sparsity_of_layers_by_hand(manifest, replacement, n, actual):
    plan = plan_pruning(table_preferring(len(manifest["layer_params"]), 3), manifest, 0.25, replacement, "layers")
    assert plan["num_layers_removed"] == n and plan["actual_sparsity"] == pytest.approx(actual, rel=1e-12)
    assert plan["sparsity_of"] == "layers" and plan["sparsity_denominator"] == sum(manifest["layer_params"])
    assert plan["target_sparsity"] == 0.25 and plan["target_layers"] is None
    assert plan["params_dense"] == manifest["parameters"]  # the model's size is still the whole model


def test_sparsity_of_on_the_tiny_models_manifest(tokenizer):
    # make_model: hidden 32, 4 heads of 8, 2 kv heads, MLP 64, untied embeddings, 6 layers.
    # layer = q 32x32 + k 32x16 + v 32x16 + o 32x32 + MLP 3 x 32x64 + 2 norms of 32 = 9,280
    vocab = len(tokenizer)
    manifest = build_manifest(make_model(vocab), {"kind": "test"}, torch.float32)
    assert manifest["layer_params"] == [9_280] * 6
    assert manifest["parameters"] == 6 * 9_280 + 2 * vocab * 32 + 32
    assert sparsity_denominator(manifest, "layers") == 55_680
    assert sparsity_denominator(manifest, "all") == manifest["parameters"]
    table = table_preferring(6, 1)
    # layers: 0.3 x 55,680 = 16,704 = 1.8 layers -> 2, actual 18,560 / 55,680 = 1/3
    by_layers = plan_pruning(table, manifest, 0.3, "none", "layers")
    assert by_layers["num_layers_removed"] == 2 and by_layers["actual_sparsity"] == pytest.approx(1 / 3)
    # all: 0.3 x parameters needs ceil(0.3 x parameters / 9,280) layers
    n_all = -(-3 * manifest["parameters"] // (10 * 9_280))
    by_all = plan_pruning(table, manifest, 0.3, "none", "all")
    assert n_all > 2 and by_all["num_layers_removed"] == n_all
    assert by_all["actual_sparsity"] == pytest.approx(n_all * 9_280 / manifest["parameters"])
    with pytest.raises(ValueError, match="sparsity_of 'embeddings' is unknown; allowed: layers, all"):
        plan_pruning(table, manifest, 0.3, "none", "embeddings")


def test_plan_layers_removes_exactly_n_with_one_module_in_their_place():
    # Llama-2-7B, the paper's "9 layers -> 1": 9 removed, one decoder layer back = 8 layers' parameters net.
    plan = plan_layers(table_preferring(32, 20), LLAMA2_7B, 9, "layer", "all")
    assert plan["target_layers"] == 9 and plan["target_sparsity"] is None and plan["sparsity_of"] == "all"
    assert plan["removed_layers"] == list(range(20, 29)) and plan["num_layers_after"] == 32 - 9 + 1
    assert plan["params_replacement"] == 202_383_360
    assert plan["params_after"] == 6_738_415_616 - 8 * 202_383_360
    assert plan["actual_sparsity"] == pytest.approx(8 * 202_383_360 / 6_738_415_616, rel=1e-12)  # 0.24027
    assert plan_layers(table_preferring(32, 20), LLAMA2_7B, 9, "layer", "layers")["actual_sparsity"] == 0.25
    # SmolLM2, 8 layers dropped: 8 x 3,540,096 / 106,202,880 = 4/15 of the decoder layers
    plain = plan_layers(table_preferring(30, 3), SMOLLM2, 8, "none", "layers")
    assert plain["removed_layers"] == list(range(3, 11)) and plain["num_layers_after"] == 22
    assert plain["actual_sparsity"] == pytest.approx(4 / 15, rel=1e-12)
    assert plan_layers(last_n_table(30), SMOLLM2, 8, "none", "layers")["removed_layers"] == list(range(21, 29))
    for bad in (0, 30):
        with pytest.raises(ValueError, match=f"prune_layers {bad} is not a layer count from 1 to 29: a window"):
            plan_layers(table_preferring(30, 3), SMOLLM2, bad, "none", "layers")


def test_plan_order_layers_takes_the_first_n():
    order = [29, 3, 7, 11, 2, 5, 17, 19, 23, 13, 8, 1]
    plan = plan_order_layers(order, SMOLLM2, 5, "none", "layers")
    assert plan["removal_order"] == [29, 3, 7, 11, 2] and plan["removed_layers"] == [2, 3, 7, 11, 29]
    assert plan["target_layers"] == 5 and plan["actual_sparsity"] == pytest.approx(5 / 30, rel=1e-12)
    with pytest.raises(ValueError, match="prune_layers 13 is not a layer count from 1 to 12: the method's order"):
        plan_order_layers(order, SMOLLM2, 13, "none", "layers")
    with pytest.raises(ValueError, match="healing 'ffn' needs one window of consecutive layers"):
        plan_order_layers(order, SMOLLM2, 5, "ffn", "layers")


def test_plan_order_layers_truncates_the_last_laco_merge():
    merges = [{"base": 25, "merged": [26, 27, 28]}, {"base": 21, "merged": [22, 23, 24]}]
    order = [i for m in merges for i in m["merged"]]
    plan = plan_order_layers(order, SMOLLM2, 4, "none", "layers", merges)
    assert plan["removed_layers"] == [22, 26, 27, 28]
    assert plan["merges"] == [merges[0], {"base": 21, "merged": [22], "truncated": True}]
    assert "truncated" not in plan_order_layers(order, SMOLLM2, 3, "none", "layers", merges)["merges"][-1]


def test_search_enough_reaches_both_targets():
    # SmolLM2 over its layers: 0.1 needs 3 layers (10,620,288 / 106,202,880 = 0.1 exactly), the layer count 5
    enough = search_enough(SMOLLM2, 0.1, 5, "layers")
    assert not enough([1, 2, 3, 4]) and enough([1, 2, 3, 4, 5])
    assert search_enough(SMOLLM2, 0.1, None, "layers")([1, 2, 3])
    assert not search_enough(SMOLLM2, 0.1, None, "all")([1, 2, 3])  # 0.079 of all parameters
    assert search_enough(SMOLLM2, None, 2, "all")([7, 9]) and not search_enough(SMOLLM2, None, 2, "all")([7])


def test_dry_run_names_layer_count_folders(tmp_path):
    """prune_layers: [2] (sparsities: []) gives l2 variant folders for every method, healing and evaluation."""
    tokenizer = make_tokenizer()
    save_tiny_checkpoint(make_model(len(tokenizer), num_layers=8), tokenizer, tmp_path / "tiny-src")
    config = {
        "models": {"tiny": {"local": str(tmp_path / "tiny-src")}},
        "data_mirror": str(MIRROR),
        "sparsities": [],
        "prune_layers": [2],
        "methods": ["streamline", "sleb"],
        "replacements": ["none", "linear"],
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    cmd = snakemake_cmd(tmp_path, tmp_path / "config.yaml", "--dry-run", "--cores", "1")
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    text = result.stdout + result.stderr
    assert result.returncode == 0, text[-3000:]
    assert "/s0" not in text
    for variant in ("streamline-none/l2", "streamline-linear/l2", "sleb-none/l2"):
        assert re.search(f"results/compressed/tiny/{variant}/[0-9a-f]{{8}}/plan.json", text)
        assert re.search(f"results/eval/tiny/{variant}/[0-9a-f]{{8}}/accuracy-[0-9a-f]{{8}}/accuracy.json", text)


def test_no_target_at_all_fails_before_any_job(tmp_path):
    config = {"models": {"tiny": {"local": str(tmp_path)}}, "sparsities": [], "prune_layers": []}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    cmd = snakemake_cmd(tmp_path, tmp_path / "config.yaml", "--dry-run", "--cores", "1")
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if "config error" in line]
    assert lines == ["config error at sparsities: empty, and prune_layers is empty too; name at least one target"]


def test_all_csv_variant_columns_record_the_target():
    from streamline.reporting.collect import COLUMNS, variant_info

    assert {"target_sparsity", "target_layers", "actual_sparsity", "sparsity_of"} <= set(COLUMNS)
    plan = {**plan_layers(table_preferring(30, 3), SMOLLM2, 8, "none", "layers"), "method": "streamline"}
    info = variant_info("m", "streamline-none/l8", {}, {("m", "streamline-none/l8"): {"plan": plan}})
    assert info["target_layers"] == 8 and info["target_sparsity"] is None and info["sparsity_of"] == "layers"
    assert info["actual_sparsity"] == pytest.approx(4 / 15) and info["layers_removed"] == 8
    old_plan = {key: value for key, value in plan.items() if key not in ("target_layers", "sparsity_of")}
    old = variant_info("m", "v", {}, {("m", "v"): {"plan": {**old_plan, "target_sparsity": 0.25}}})
    assert old["sparsity_of"] == "all" and old["target_layers"] is None  # plans from before sparsity_of
    dense = variant_info("m", "dense", {"m": SMOLLM2}, {})
    assert dense["target_layers"] == 0 and dense["target_sparsity"] == 0.0
