"""The per-family layout of decoder-only causal LMs: the one module that knows where a model keeps its decoder
layers, final norm, rotary embedding, MLP block and attention output, and how one decoder layer runs alone.

Every other module asks this one (decoder_layers, final_norm, mlp_block, layer_forward, lora_targets, ...);
surgery.py keeps the mechanics of dropping, skipping and merging layers and asks here for the layout.

Families (transformers 5.x module layouts; FAMILIES below):

| family | model_type | layers | MLP block (what `swiglu` trains; the layer with a zero attention output) |
|---|---|---|---|
| llama | llama, mistral | model.layers | x + mlp(post_attention_layernorm(x)) |
| qwen | qwen2, qwen3 | model.layers | x + mlp(post_attention_layernorm(x)) |
| gemma3 | gemma3_text | model.layers | x + post_feedforward_layernorm(mlp(pre_feedforward_layernorm(x))) |
| phi3 | phi3 | model.layers | x + mlp(post_attention_layernorm(x)) (fused qkv_proj, gate_up_proj) |
| opt | opt | model.decoder.layers | x + fc2(act(fc1(final_layer_norm(x)))) (learned positions, no rotary) |

Attention masks: a layer of type `sliding_attention` (config.layer_types: Qwen2/3, Gemma3) or a model with a
config-wide `sliding_window` (Mistral, Phi-3) sees only the last `sliding_window` positions (transformers'
`sliding_window_overlay`: q - k < window). Gemma3's rotary embedding takes the layer type (its sliding layers use
`rope_local_base_freq`). Gemma3 scales its embeddings inside its embedding module, so h_0 (the state entering
layer 0) already carries the scale; nothing here depends on it.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import reduce

import torch
from transformers import PretrainedConfig


class UnknownFamilyError(ValueError):
    """A model whose architecture no FAMILIES entry describes."""


def _pre_norm_mlp(layer: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """Llama, Mistral, Qwen2/3: x + mlp(post_attention_layernorm(x)), (B, T, d) -> (B, T, d)."""
    return hidden + layer.mlp(layer.post_attention_layernorm(hidden))


def _phi3_mlp(layer: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """Phi-3: x + dropout(mlp(post_attention_layernorm(x))) (resid_mlp_dropout; identity in eval mode)."""
    return hidden + layer.resid_mlp_dropout(layer.mlp(layer.post_attention_layernorm(hidden)))


def _sandwich_mlp(layer: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """Gemma3: x + post_feedforward_layernorm(mlp(pre_feedforward_layernorm(x)))."""
    return hidden + layer.post_feedforward_layernorm(layer.mlp(layer.pre_feedforward_layernorm(hidden)))


def _opt_mlp(layer: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """OPT: x + fc2(act(fc1(final_layer_norm(x)))); for post-norm OPT (do_layer_norm_before False, OPT-350m)
    the zero attention half still applies self_attn_layer_norm, and final_layer_norm comes after the residual."""
    dropout = layer.dropout if layer.training else 0.0
    if layer.do_layer_norm_before:
        inner = layer.fc2(layer.activation_fn(layer.fc1(layer.final_layer_norm(hidden))))
        return hidden + torch.nn.functional.dropout(inner, p=dropout)
    hidden = layer.self_attn_layer_norm(hidden)
    inner = layer.fc2(layer.activation_fn(layer.fc1(hidden)))
    return layer.final_layer_norm(hidden + torch.nn.functional.dropout(inner, p=dropout))


def _opt_mlp_modules(layer: torch.nn.Module) -> tuple[str, ...]:
    post_norm = () if layer.do_layer_norm_before else ("self_attn_layer_norm",)
    return ("fc1", "fc2", "final_layer_norm", *post_norm)


@dataclass(frozen=True)
class Family:
    """Where one family keeps its parts: dotted attribute paths from the CausalLM (`layers`, `final_norm`,
    `rotary`) or from one decoder layer (`attention_output`, `mlp_modules`, `mlp_output`, `down_proj`)."""

    name: str
    label: str
    model_types: tuple[str, ...]  # config.model_type values
    layers: str = "model.layers"
    final_norm: str = "model.norm"
    rotary: str | None = "model.rotary_emb"  # None: positions are added to the embeddings (OPT)
    rotary_takes_layer_type: bool = False  # Gemma3: rotary(x, positions, layer_type)
    attention_output: str = "self_attn.o_proj"  # zeroed by `swiglu`: the layer then computes its MLP block alone
    mlp_modules: tuple[str, ...] | Callable[[torch.nn.Module], tuple[str, ...]] = ("mlp", "post_attention_layernorm")
    mlp_output: str = "mlp"  # the module whose output is the MLP's contribution to the residual stream
    down_proj: str | None = "mlp.down_proj"  # the last linear map of that contribution (None: a norm follows it)
    block: Callable[[torch.nn.Module, torch.Tensor], torch.Tensor] = _pre_norm_mlp
    init_std: str = "initializer_range"  # the config key of the weight-init standard deviation
    # LoRA target names in the Llama vocabulary (the schema default) -> this family's module names
    lora_names: dict[str, tuple[str, ...]] = field(default_factory=dict)


LLAMA_LORA = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
FAMILIES: dict[str, Family] = {
    family.name: family
    for family in (
        Family("llama", "Llama/Mistral", ("llama", "mistral")),
        Family("qwen", "Qwen2/Qwen3", ("qwen2", "qwen3")),
        Family(
            "gemma3",
            "Gemma3 (text)",
            ("gemma3_text",),
            rotary_takes_layer_type=True,
            mlp_modules=("mlp", "pre_feedforward_layernorm", "post_feedforward_layernorm"),
            mlp_output="post_feedforward_layernorm",
            down_proj=None,
            block=_sandwich_mlp,
        ),
        Family(
            "phi3",
            "Phi-3",
            ("phi3",),
            block=_phi3_mlp,
            lora_names={
                "q_proj": ("qkv_proj",),
                "k_proj": ("qkv_proj",),
                "v_proj": ("qkv_proj",),
                "gate_proj": ("gate_up_proj",),
                "up_proj": ("gate_up_proj",),
            },
        ),
        Family(
            "opt",
            "OPT",
            ("opt",),
            layers="model.decoder.layers",
            final_norm="model.decoder.final_layer_norm",
            rotary=None,
            attention_output="self_attn.out_proj",
            mlp_modules=_opt_mlp_modules,
            mlp_output="fc2",
            down_proj="fc2",
            block=_opt_mlp,
            init_std="init_std",
            lora_names={"o_proj": ("out_proj",), "gate_proj": (), "up_proj": ("fc1",), "down_proj": ("fc2",)},
        ),
    )
}
# transformers' model folder (transformers.models.<folder>) -> family, for a decoder layer seen alone
_FOLDERS = {"llama": "llama", "mistral": "llama", "qwen2": "qwen", "qwen3": "qwen", "gemma3": "gemma3",
            "phi3": "phi3", "opt": "opt"}


def known_families() -> str:
    """'Llama/Mistral (llama, mistral), ...': the families and the model_type values each covers."""
    return ", ".join(f"{f.label} ({', '.join(f.model_types)})" for f in FAMILIES.values())


def family_of(obj: torch.nn.Module | PretrainedConfig) -> Family:
    """The Family of a model, its config, or one of its decoder layers (by its transformers module folder).

    An unknown family is one line naming the architecture and the known families.
    """
    if isinstance(obj, PretrainedConfig) or hasattr(obj, "config") and isinstance(obj.config, PretrainedConfig):
        config = obj if isinstance(obj, PretrainedConfig) else obj.config
        for family in FAMILIES.values():
            if config.model_type in family.model_types:
                return family
        architecture = ", ".join(getattr(config, "architectures", None) or [type(obj).__name__])
        where = f"architecture {architecture} (model_type {config.model_type!r})"
    else:
        parts = type(obj).__module__.split(".")
        folder = parts[2] if parts[:2] == ["transformers", "models"] and len(parts) > 2 else None
        if folder in _FOLDERS:
            return FAMILIES[_FOLDERS[folder]]
        where = f"module {type(obj).__name__} (from {type(obj).__module__})"
    raise UnknownFamilyError(f"{where} is not a known model family; known families: {known_families()}")


def _get(obj: object, path: str) -> object:
    return reduce(getattr, path.split("."), obj)


def base_model(model: torch.nn.Module) -> torch.nn.Module:
    """The decoder stack without the LM head (model.model for every family): its output is the final state."""
    family_of(model)
    return model.model


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The list of decoder layers (model.model.layers; OPT: model.model.decoder.layers)."""
    return _get(model, family_of(model).layers)


def set_decoder_layers(model: torch.nn.Module, layers: torch.nn.ModuleList) -> None:
    """Put `layers` where the family keeps its decoder layers (the config is the caller's business)."""
    parent, _, name = family_of(model).layers.rpartition(".")
    setattr(_get(model, parent), name, layers)


def final_norm(model: torch.nn.Module) -> torch.nn.Module:
    """The norm after the last decoder layer (model.model.norm; OPT: decoder.final_layer_norm)."""
    family = family_of(model)
    norm = _get(model, family.final_norm)
    if norm is None:
        raise ValueError(f"this {family.label} model has no final norm ({family.final_norm} is None)")
    return norm


def per_layer_config_keys(config: PretrainedConfig, num_layers: int) -> list[str]:
    """Config entries with one value per decoder layer (`layer_types` and peers): lists of length `num_layers`."""
    return [
        key
        for key, value in vars(config).items()
        if isinstance(value, list) and len(value) == num_layers and key != "architectures"
        and not key.endswith("token_id")  # a list of eos ids is not per layer
    ]


def initializer_std(config: PretrainedConfig) -> float:
    """The weight-init standard deviation of the model (initializer_range; OPT: init_std): the paper's FFN's."""
    return float(getattr(config, family_of(config).init_std))


def attention_output(layer: torch.nn.Module) -> torch.nn.Module:
    """The attention's output projection of a decoder layer (o_proj; OPT: out_proj)."""
    return _get(layer, family_of(layer).attention_output)


def mlp_block_modules(layer: torch.nn.Module) -> list[torch.nn.Module]:
    """The MLP and the norm(s) around it: what the `swiglu` replacement trains and counts as its parameters."""
    names = family_of(layer).mlp_modules
    return [_get(layer, name) for name in (names(layer) if callable(names) else names)]


def mlp_block(layer: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """The decoder layer's feed-forward half alone, residual included, as the family computes it; (B, T, d).

    Equals the whole layer when its attention output projection is zero (tested per family)."""
    return family_of(layer).block(layer, hidden)


def mlp_output(layer: torch.nn.Module) -> torch.nn.Module:
    """The module whose output the layer adds to the residual stream as its MLP contribution M (Llama: mlp;
    Gemma3: post_feedforward_layernorm; OPT: fc2)."""
    return _get(layer, family_of(layer).mlp_output)


def mlp_down_proj(layer: torch.nn.Module) -> torch.nn.Linear:
    """The linear map that produces M (mlp.down_proj; OPT: fc2); an error where a norm follows it (Gemma3)."""
    family = family_of(layer)
    if family.down_proj is None:
        raise ValueError(
            f"{family.label}: the MLP output passes {family.mlp_output} after its last linear map, "
            "so a linear map of it cannot be fused into that map"
        )
    return _get(layer, family.down_proj)


def lora_targets(model: torch.nn.Module, names: list[str]) -> list[str]:
    """peft target_modules for `names`: the family's own linear module names, and the Llama names of the schema
    default translated (Phi-3: q/k/v -> qkv_proj, gate/up -> gate_up_proj; OPT: o_proj -> out_proj, up -> fc1,
    down -> fc2, no gate). A name that is neither is one error line listing the layer's linear modules."""
    family = family_of(model)
    present = {
        name.rsplit(".", 1)[-1]
        for name, module in decoder_layers(model)[0].named_modules()
        if isinstance(module, torch.nn.Linear)
    }
    targets: list[str] = []
    for name in names:
        for target in (name,) if name in present else family.lora_names.get(name, (name,)):
            if target not in present:
                raise ValueError(
                    f"lora.target_modules: {name!r} is not a linear module of a {family.label} decoder layer; "
                    f"allowed: {', '.join(sorted(present))} (or the Llama names {', '.join(LLAMA_LORA)})"
                )
            if target not in targets:
                targets.append(target)
    return targets


def layer_kind(config: PretrainedConfig, index: int) -> tuple[str, int | None]:
    """(layer type, sliding window or None) that the model's forward gives decoder layer `index`."""
    types = getattr(config, "layer_types", None)
    if types:  # Qwen2/3, Gemma3: per layer
        kind = types[index]
        return kind, getattr(config, "sliding_window", None) if kind == "sliding_attention" else None
    window = getattr(config, "sliding_window", None)  # Mistral, Phi-3: every layer, when set
    return ("sliding_attention" if window else "full_attention"), window


ATTENTIONS = ("causal", "bidirectional")  # how a decoder layer run alone attends (layer_forward)


def causal_mask(seq_len: int, dtype: torch.dtype, window: int | None = None) -> torch.Tensor:
    """Additive (1, 1, T, T) causal mask (eager and SDPA attention alike); with `window`, key k is visible
    from query q only when 0 <= q - k < window (transformers' sliding_window_overlay)."""
    q = torch.arange(seq_len)[:, None]
    k = torch.arange(seq_len)[None]
    blocked = k > q
    if window is not None:
        blocked |= q - k >= window
    mask = torch.zeros(seq_len, seq_len, dtype=dtype).masked_fill(blocked, torch.finfo(dtype).min)
    return mask[None, None]


def attention_mask(seq_len: int, dtype: torch.dtype, window: int | None, attention: str) -> torch.Tensor:
    """The additive (1, 1, T, T) mask of `attention`: `causal` (causal_mask), or `bidirectional`, all zeros: every
    position sees every other, as a decoder layer called without a mask under eager attention computes it (the
    official LLM-Streamline training, docs/deviations.md)."""
    if attention not in ATTENTIONS:
        raise ValueError(f"attention {attention!r} is unknown; allowed: {', '.join(ATTENTIONS)}")
    if attention == "bidirectional":
        return torch.zeros(1, 1, seq_len, seq_len, dtype=dtype)
    return causal_mask(seq_len, dtype, window)


def layer_forward(
    layer: torch.nn.Module,
    rotary: torch.nn.Module | None,
    layer_type: str | None = None,
    window: int | None = None,
    attention: str = "causal",
) -> Callable[[torch.Tensor], torch.Tensor]:
    """Run a decoder layer alone on whole sequences starting at position 0, with the causal (sliding) mask, or no
    mask at all for `attention="bidirectional"`, and the rotary position embeddings of `layer_type` (Gemma3;
    default: the layer's own type). (B, T, d) -> (B, T, d)."""
    family = family_of(layer)
    if family.rotary_takes_layer_type and layer_type is None:
        layer_type = layer.self_attn.layer_type
    attention_mask(1, torch.float32, window, attention)  # an unknown `attention` fails here, not at the first batch

    def forward(hidden: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(hidden.shape[1], device=hidden.device)[None].expand(hidden.shape[0], -1)
        kwargs = {
            "attention_mask": attention_mask(hidden.shape[1], hidden.dtype, window, attention).to(hidden.device),
            "position_ids": positions,
        }
        if rotary is not None:
            extra = (layer_type,) if family.rotary_takes_layer_type else ()
            kwargs["position_embeddings"] = rotary(hidden, positions, *extra)
        out = layer(hidden, **kwargs)
        return out[0] if isinstance(out, tuple) else out

    return forward


def standalone_forward(
    model: torch.nn.Module, layer: torch.nn.Module, position: int, attention: str = "causal"
) -> Callable[[torch.Tensor], torch.Tensor]:
    """`layer` (e.g. a copy of one of `model`'s layers) run alone as the model would run it at `position`:
    that position's mask (full or sliding; none for `attention="bidirectional"`) and rotary embedding (a float32
    copy of the model's)."""
    family = family_of(model)
    layer_type, window = layer_kind(model.config, position)
    rotary = copy.deepcopy(_get(model, family.rotary)).float() if family.rotary else None
    return layer_forward(layer, rotary, layer_type, window, attention)


def is_norm_param(name: str) -> bool:
    """A normalisation weight of a decoder layer (input/post-attention layernorm, q/k norms, Gemma3's
    pre/post-feedforward norms, OPT's self_attn_layer_norm/final_layer_norm): LaCo keeps these the base's."""
    return any("norm" in part for part in name.split(".")[:-1])
