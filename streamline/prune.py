"""Pruning plans: target sparsity -> number of layers n -> the most redundant window; and layer removal."""

from __future__ import annotations

from typing import Any

import pandas as pd
import torch
from transformers import PreTrainedModel

from streamline.hidden_states import decoder_layers
from streamline.importance import best_window

REPLACEMENTS = ("none", "linear", "ffn", "swiglu", "layer")


def check_sparsity(target: float) -> float:
    if not 0.0 < float(target) < 1.0:
        raise ValueError(f"sparsity {target} is outside the open interval (0, 1)")
    return float(target)


def replacement_params(kind: str, manifest: dict[str, Any], start: int) -> int:
    """Parameters a replacement adds back for the window starting at `start` (what the method trains).

    `ffn`/`swiglu` count the MLP block and its norm; the zero attention stored to keep the checkpoint
    loadable by stock transformers is reported separately as checkpoint overhead, not as method cost.
    """
    if kind == "none":
        return 0
    if kind == "linear":
        return int(manifest["hidden_size"]) ** 2
    if kind in ("ffn", "swiglu"):
        return int(manifest["mlp_params"][start])
    if kind == "layer":
        return int(manifest["layer_params"][start])
    raise ValueError(f"replacement {kind!r} is unknown; allowed: {', '.join(REPLACEMENTS)}")


def plan_pruning(
    table: pd.DataFrame, manifest: dict[str, Any], target: float, replacement: str
) -> dict[str, Any]:
    """Smallest window length whose net parameter removal reaches `target`, and its best window.

    sparsity = (params of removed layers - replacement params) / params of the dense model.
    """
    target = check_sparsity(target)
    if replacement not in REPLACEMENTS:
        raise ValueError(f"replacement {replacement!r} is unknown; allowed: {', '.join(REPLACEMENTS)}")
    total = int(manifest["parameters"])
    layer_params = [int(p) for p in manifest["layer_params"]]
    num_layers = len(layer_params)
    best_reach = 0.0
    for n in range(1, num_layers):
        window = best_window(table, n)
        start = int(window["start_layer"])
        removed = sum(layer_params[start : start + n])
        added = replacement_params(replacement, manifest, start)
        actual = (removed - added) / total
        best_reach = max(best_reach, actual)
        if actual >= target:
            return {
                "target_sparsity": target,
                "actual_sparsity": actual,
                "replacement": replacement,
                "metric": str(window["metric"]),
                "start_layer": start,
                "num_layers_removed": n,
                "removed_layers": list(range(start, start + n)),
                "window_score": float(window["score"]),
                "params_dense": total,
                "params_removed": removed,
                "params_replacement": added,
                "params_after": total - removed + added,
                "num_layers_dense": num_layers,
                "num_layers_after": num_layers - n + (1 if replacement in ("ffn", "swiglu", "layer") else 0),
            }
    raise ValueError(
        f"sparsity {target} needs more layers than the model has: removing up to {num_layers - 1} of "
        f"{num_layers} layers with replacement {replacement!r} reaches at most {best_reach:.4f}"
    )


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
