"""Layer surgery on a loaded model: keep a subset of the decoder layers, run without some, merge layers (LaCo).

The plans (prune.py) say which layers go; the criteria (criteria.py) and the healings (replace.py, healing.py)
change the model only through these functions. Where a family keeps its layers, which config entries are per
layer and which weights are norms: families.py.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from transformers import PreTrainedModel

from streamline.acquisition.families import decoder_layers, is_norm_param, per_layer_config_keys, set_decoder_layers

LACO_MERGES = ("code", "paper")  # schema `laco.merge`; the default `code` is what the published numbers used


def keep_layers(model: PreTrainedModel, keep: list[int]) -> None:
    """Keep only the decoder layers at indices `keep` (in order), consistently with the config.

    Renumbers each attention's `layer_idx` (the KV-cache slot), sets `num_hidden_layers`, and slices
    every per-layer list in the config (`layer_types` and peers: any list as long as the old layer count).
    """
    layers = decoder_layers(model)
    old = len(layers)
    if sorted(set(keep)) != sorted(keep) or any(not 0 <= i < old for i in keep):
        raise ValueError(f"layer indices {keep} are not distinct indices in 0..{old - 1}")
    kept = torch.nn.ModuleList([layers[i] for i in keep])
    for new_idx, layer in enumerate(kept):
        for owner in layer.modules():  # the layer and its attention (whatever the family names it)
            if hasattr(owner, "layer_idx"):
                owner.layer_idx = new_idx
    set_decoder_layers(model, kept)
    config = model.config
    for key in per_layer_config_keys(config, old):
        setattr(config, key, [getattr(config, key)[i] for i in keep])
    config.num_hidden_layers = len(keep)


def drop_layers(model: PreTrainedModel, removed: Iterable[int]) -> None:
    """Remove the decoder layers at indices `removed`, keeping the others in order (keep_layers)."""
    removed = set(removed)
    keep_layers(model, [i for i in range(len(decoder_layers(model))) if i not in removed])


@contextmanager
def layers_skipped(model: PreTrainedModel, skipped: set[int]) -> Iterator[None]:
    """Run the model without the `skipped` layers (no cache), restoring it afterwards.

    The per-layer config lists (`layer_types`: Gemma3's and Qwen's sliding/full pattern) are sliced with the
    layers, so every remaining layer keeps its own mask and rotary embedding.
    """
    layers = decoder_layers(model)
    config = model.config
    saved = {key: getattr(config, key) for key in per_layer_config_keys(config, len(layers))}
    old_count = config.num_hidden_layers
    kept = [i for i in range(len(layers)) if i not in skipped]
    set_decoder_layers(model, torch.nn.ModuleList([layers[i] for i in kept]))
    for key, value in saved.items():
        setattr(config, key, [value[i] for i in kept])
    config.num_hidden_layers = len(kept)
    try:
        yield
    finally:
        set_decoder_layers(model, layers)
        for key, value in saved.items():
            setattr(config, key, value)
        config.num_hidden_layers = old_count


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


def apply_plan(model: PreTrainedModel, plan: dict[str, Any]) -> None:
    """Remove the plan's layers; LaCo plans first merge each group into its base layer, in the recorded order.

    Each merge uses the `laco.merge` rule it was searched with (`mode`: code | paper, merge_layer_params);
    orders written before the option existed used the paper's rule.
    """
    layers = decoder_layers(model)
    for merge in plan.get("merges", []):
        base = layers[merge["base"]]
        others = [layers[i].state_dict() for i in merge["merged"]]
        base.load_state_dict(merge_layer_params(base.state_dict(), others, merge.get("mode", "paper")))
    drop_layers(model, plan["removed_layers"])
