"""Every supported model family end to end on a tiny random model built here from its transformers config class:
hidden-state capture and importance, each replacement kind, save and reload, LoRA (families.py, issue 15).

The sliding window (8) is shorter than the test sequences (24 tokens), and Gemma3 alternates sliding and full
layers, so a wrong mask or a wrong rotary embedding in a standalone layer shows as a mismatch.
"""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import random_ids, save_tiny_checkpoint
from transformers import (
    AutoModelForCausalLM,
    Gemma3TextConfig,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    MistralConfig,
    OPTConfig,
    Phi3Config,
    Qwen2Config,
    Qwen3Config,
)

from streamline.acquisition.checkpoint import attach_replacement, save_checkpoint
from streamline.acquisition.families import (
    FAMILIES,
    UnknownFamilyError,
    base_model,
    decoder_layers,
    family_of,
    final_norm,
    lora_targets,
    standalone_forward,
)
from streamline.acquisition.models import build_manifest, layer_param_counts, load_model
from streamline.healing.heal import run_healing
from streamline.healing.lm import lora_heal
from streamline.healing.replace import (
    build_compressed,
    build_replacement,
    cache_pairs,
    evaluate_mse,
    train_replacement,
)
from streamline.healing.training import TrainConfig
from streamline.importance.hidden_states import residual_states
from streamline.importance.scores import accumulate
from streamline.importance.windows import window_table
from streamline.pruning.plans import plan_layers
from streamline.pruning.surgery import drop_layers, layers_skipped

D, FF, LAYERS, WINDOW, SEQ = 32, 64, 6, 8, 24
COMMON = {
    "hidden_size": D,
    "intermediate_size": FF,
    "num_hidden_layers": LAYERS,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 128,
}
GEMMA_TYPES = ["sliding_attention", "full_attention"] * (LAYERS // 2)


def _config(name: str, vocab: int):
    """The tiny config of one architecture (their config classes construct offline)."""
    if name == "llama":
        return LlamaConfig(vocab_size=vocab, **COMMON)
    if name == "mistral":
        return MistralConfig(vocab_size=vocab, sliding_window=WINDOW, head_dim=8, **COMMON)
    if name == "qwen2":  # layers >= 3 slide
        return Qwen2Config(vocab_size=vocab, use_sliding_window=True, sliding_window=WINDOW, max_window_layers=3,
                           **COMMON)
    if name == "qwen3":
        return Qwen3Config(vocab_size=vocab, head_dim=8, **COMMON)
    if name == "gemma3":
        return Gemma3TextConfig(vocab_size=vocab, head_dim=8, sliding_window=WINDOW, layer_types=GEMMA_TYPES,
                                query_pre_attn_scalar=8, **COMMON)
    if name == "phi3":
        return Phi3Config(vocab_size=vocab, pad_token_id=0, bos_token_id=0, eos_token_id=0, **COMMON)
    assert name == "opt"
    return OPTConfig(vocab_size=vocab, hidden_size=D, ffn_dim=FF, num_hidden_layers=LAYERS, num_attention_heads=4,
                     max_position_embeddings=128, word_embed_proj_dim=D, dropout=0.0, pad_token_id=0,
                     bos_token_id=0, eos_token_id=0)


ARCHS = ["llama", "mistral", "qwen2", "qwen3", "gemma3", "phi3", "opt"]
FAMILY = {"llama": "llama", "mistral": "llama", "qwen2": "qwen", "qwen3": "qwen", "gemma3": "gemma3",
          "phi3": "phi3", "opt": "opt"}
# The swiglu module's trainable parameters (the MLP block), counted by hand from each layout.
MLP_BLOCK_PARAMS = {
    "llama": 3 * D * FF + D,  # gate, up, down; post_attention_layernorm
    "qwen": 3 * D * FF + D,
    "gemma3": 3 * D * FF + 2 * D,  # gate, up, down; pre- and post-feedforward norms
    "phi3": D * 2 * FF + FF * D + D,  # fused gate_up_proj, down_proj; post_attention_layernorm
    "opt": D * FF + FF + FF * D + D + 2 * D,  # fc1, fc2 with biases; final_layer_norm weight and bias
}
LORA_TARGETS = {
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "qwen": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "gemma3": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "phi3": ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],
    "opt": ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"],
}
FAST = TrainConfig(epochs=2, batch_size=4, lr=3e-3, warmup_ratio=0.1, seed=0, progress=False)


def make_family_model(name: str, vocab: int, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(_config(name, vocab))
    with torch.no_grad():  # a larger spread than the init's 0.02 gives every layer real structure
        for param in model.parameters():
            if param.dim() == 2:
                param.normal_(0.0, 0.15)
    return model.eval()


def ids(n: int, vocab: int, seed: int = 0) -> torch.Tensor:
    return random_ids(vocab, seqs=n, length=SEQ, seed=seed)


@pytest.fixture(params=ARCHS)
def arch(request) -> str:
    return request.param


@pytest.fixture()
def model(arch, tokenizer):
    return make_family_model(arch, len(tokenizer))


def hand_mlp_block(family: str, layer: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Each family's feed-forward half written out from its transformers source (not from families.py)."""
    if family in ("llama", "qwen", "phi3"):
        return x + layer.mlp(layer.post_attention_layernorm(x))
    if family == "gemma3":
        return x + layer.post_feedforward_layernorm(layer.mlp(layer.pre_feedforward_layernorm(x)))
    return x + layer.fc2(torch.relu(layer.fc1(layer.final_layer_norm(x))))


def test_family_dispatch_and_unknown_family(model, arch):
    assert family_of(model).name == FAMILY[arch]
    assert family_of(model.config) is family_of(decoder_layers(model)[0]) is FAMILIES[FAMILY[arch]]
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=10))
    with pytest.raises(UnknownFamilyError) as err:
        decoder_layers(gpt2)
    message = str(err.value)
    assert "\n" not in message and "GPT2LMHeadModel" in message and "'gpt2'" in message
    assert all(family.label in message for family in FAMILIES.values())


@torch.no_grad()
def test_states_are_the_layers_run_alone_and_importance_table(model, arch, tokenizer):
    """h_{j+1} = layer j run standalone (its mask, its rotary type) on h_j; h_L + final norm = the model's output."""
    batch = ids(3, len(tokenizer))
    states = residual_states(model, batch)
    assert len(states) == LAYERS + 1 and states[0].shape == (3, SEQ, D)
    layers = decoder_layers(model)
    for j in range(LAYERS):
        torch.testing.assert_close(standalone_forward(model, layers[j], j)(states[j]), states[j + 1])
    expected = base_model(model)(batch, use_cache=False).last_hidden_state
    torch.testing.assert_close(final_norm(model)(states[-1]), expected)
    table = window_table(accumulate(model, [batch], progress=False).mean("cosine"), "cosine")
    assert len(table) == sum(LAYERS - n + 1 for n in range(1, LAYERS))
    row = table[(table.start_layer == 1) & (table.num_layers == 3)].iloc[0]
    brute = torch.nn.functional.cosine_similarity(states[1], states[4], dim=-1).mean()
    assert row.score == pytest.approx(float(brute), abs=1e-5)


@torch.no_grad()
def test_layers_skipped_keeps_each_layer_its_own_mask(model, tokenizer):
    """Running without layers 1-2 equals the model with them dropped (per-layer layer_types sliced alike)."""
    batch = ids(2, len(tokenizer))
    with layers_skipped(model, {1, 2}):
        skipped = model(batch, use_cache=False).logits
    assert len(decoder_layers(model)) == LAYERS == model.config.num_hidden_layers
    dropped = copy.deepcopy(model)
    drop_layers(dropped, [1, 2])
    torch.testing.assert_close(skipped, dropped(batch).logits)
    if getattr(model.config, "layer_types", None):
        assert dropped.config.layer_types == [model.config.layer_types[i] for i in (0, 3, 4, 5)]


@torch.no_grad()
def test_swiglu_is_the_family_mlp_block_inside_a_stock_layer(model, arch, tokenizer):
    family = FAMILY[arch]
    module, apply = build_replacement("swiglu", model, 2)
    hidden = residual_states(model, ids(2, len(tokenizer)))[2]
    torch.testing.assert_close(apply(hidden), hand_mlp_block(family, module, hidden))
    # the whole stock layer with its zeroed attention output computes exactly that block
    torch.testing.assert_close(standalone_forward(model, module, 2)(hidden), apply(hidden))
    assert sum(p.numel() for p in module.parameters() if p.requires_grad) == MLP_BLOCK_PARAMS[family]
    assert layer_param_counts(model)["mlp_params"] == [MLP_BLOCK_PARAMS[family]] * LAYERS


KINDS = ["none", "linear", "ffn", "swiglu", "layer"]


@pytest.mark.parametrize("kind", KINDS)
def test_each_replacement_trains_saves_and_reloads(arch, tokenizer, tmp_path, kind):
    """Plan from the importance table, train the kind on cached pairs, build the compressed model; the saved
    folder reloads (stock transformers; the project loader for linear/ffn) with identical logits, and in place
    the replacement computes exactly the function that was trained."""
    vocab = len(tokenizer)
    dense = make_family_model(arch, vocab)
    manifest = build_manifest(dense, {"kind": "test"}, torch.float32)
    table = window_table(accumulate(dense, [ids(4, vocab, seed=3)], progress=False).mean("cosine"), "cosine")
    plan = plan_layers(table, manifest, 2, kind, "layers")
    start, end = plan["start_layer"], plan["start_layer"] + 2
    trained = apply = None
    if kind != "none":
        train = cache_pairs(dense, ids(8, vocab), start, end, tmp_path / "train", shard_sequences=4)
        val = cache_pairs(dense, ids(4, vocab, seed=1), start, end, tmp_path / "val", shard_sequences=4)
        # `layer` starts from the window's second layer (as best_fit may pick): on Gemma3 its type differs
        source = start + 1 if kind == "layer" else start
        trained, apply = build_replacement(kind, dense, source, position=start)
        result = train_replacement(trained, apply, train, val, FAST)
        assert result["best_val_loss"] == pytest.approx(evaluate_mse(apply, val, 4))
    model = copy.deepcopy(dense)
    extra = build_compressed(model, plan, kind, trained)
    if extra is not None:
        attach_replacement(model, *extra)
    save_checkpoint(model, tokenizer, tmp_path / "out", extra=extra)
    if kind in ("linear", "ffn"):
        reloaded, _ = load_model(tmp_path / "out")
    else:
        reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    batch = ids(2, vocab, seed=5)
    layers_after = LAYERS - 2 + (kind in ("swiglu", "layer"))
    assert reloaded.config.num_hidden_layers == layers_after == len(decoder_layers(reloaded))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(batch).logits, model(batch).logits, atol=1e-5, rtol=0)
        if kind in ("swiglu", "layer"):  # the state leaving the trained layer in place = apply(state entering it)
            states = residual_states(reloaded, batch)
            torch.testing.assert_close(states[start + 1], apply(states[start]), atol=1e-5, rtol=1e-5)
        if kind in ("linear", "ffn"):  # the module sits in front of the layer after the window (or final norm)
            last = start == len(decoder_layers(reloaded))
            target = final_norm(reloaded) if last else decoder_layers(reloaded)[start]
            seen = {}

            def grab_in(_module, args, kwargs):
                seen["in"] = args[0] if args else kwargs["hidden_states"]

            def grab_out(_module, _args, out):
                seen["out"] = out

            hooks = [  # prepend: the state before the module's own pre-hook
                target.register_forward_pre_hook(grab_in, with_kwargs=True, prepend=True),
                target.register_forward_hook(grab_out),
            ]
            reloaded(batch)
            for hook in hooks:
                hook.remove()
            stock = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()  # the same, without the module
            run = final_norm(stock) if last else standalone_forward(stock, decoder_layers(stock)[start], start)
            torch.testing.assert_close(seen["out"], run(trained(seen["in"])), atol=1e-5, rtol=1e-5)


def test_run_replacement_layer_job(arch, tokenizer, tmp_path):
    """The whole replacement job (run_healing) for `layer`, which crashed on Gemma3's rotary before."""
    vocab = len(tokenizer)
    dense = save_tiny_checkpoint(make_family_model(arch, vocab), tokenizer, tmp_path / "dense")
    plan = {"start_layer": 2, "num_layers_removed": 2, "removed_layers": [2, 3]}
    stats = run_healing(
        dense, plan, "layer", ids(8, vocab), ids(4, vocab, seed=1), tmp_path / "out",
        cfg=FAST, shard_sequences=4, device="cpu", compute_dtype=torch.float32,
    )
    assert stats["best_val_loss"] < stats["val_loss_identity"]
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert reloaded.config.num_hidden_layers == LAYERS - 1


def test_lora_on_the_family_targets(model, arch, tokenizer):
    vocab = len(tokenizer)
    family = FAMILY[arch]
    build_compressed(model, {"removed_layers": [2, 3]}, "none", None)
    assert lora_targets(model, LORA_TARGETS["llama"]) == LORA_TARGETS[family]
    assert lora_targets(model, LORA_TARGETS[family]) == LORA_TARGETS[family]
    with pytest.raises(ValueError, match="'wq' is not a linear module of a .* decoder layer; allowed: "):
        lora_targets(model, ["wq"])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = TrainConfig(epochs=1, batch_size=4, lr=1e-3, warmup_ratio=0.1, seed=0, progress=False)
    train = ids(8, vocab)
    merged, stats = lora_heal(model, train, train[:4], cfg, {})  # validated on trained text: epoch 1 is kept
    assert stats["lora"]["resolved_targets"] == LORA_TARGETS[family]
    assert all(torch.isfinite(torch.tensor(row["val_loss"])) for row in stats["curve"])
    after = merged.state_dict()
    assert set(after) == set(before)  # adapters merged: no lora_A/lora_B left, the stock parameter names
    changed = {k.rsplit(".", 2)[-2] for k in after if not torch.equal(after[k], before[k])}
    assert changed == set(LORA_TARGETS[family])
