"""Layer surgery on a loaded model: keep a subset of the decoder layers, run without some, merge layers (LaCo).

The plans (prune.py) say which layers go; the criteria (criteria.py) and the healings (replace.py, healing.py)
change the model only through these functions.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from transformers import PreTrainedModel

from streamline.hidden_states import decoder_layers

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
        for owner in (layer, getattr(layer, "self_attn", None)):
            if owner is not None and hasattr(owner, "layer_idx"):
                owner.layer_idx = new_idx
    model.model.layers = kept
    config = model.config
    for key, value in list(vars(config).items()):
        if isinstance(value, list) and len(value) == old and key != "architectures":
            setattr(config, key, [value[i] for i in keep])
    config.num_hidden_layers = len(keep)


def drop_layers(model: PreTrainedModel, removed: Iterable[int]) -> None:
    """Remove the decoder layers at indices `removed`, keeping the others in order (keep_layers)."""
    removed = set(removed)
    keep_layers(model, [i for i in range(len(decoder_layers(model))) if i not in removed])


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
