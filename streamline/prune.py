"""Pruning plans: target sparsity -> number of layers n -> the most redundant window; and layer removal."""

from __future__ import annotations

from typing import Any

import pandas as pd
import torch
from transformers import PreTrainedModel

from streamline.hidden_states import decoder_layers
from streamline.importance import best_window

REPLACEMENTS = ("none", "linear", "ffn", "swiglu", "layer")
# Every healing kind: the replacements (trained on cached states with MSE), LoRA, and the end-to-end `lm-loss`
# variant (an ffn replacement trained with the language-modelling loss).
HEALINGS = (*REPLACEMENTS, "lora", "lm-loss")
# Healing kinds that put a module in place of a window, and so need consecutive removed layers.
WINDOW_HEALINGS = ("linear", "ffn", "swiglu", "layer", "lm-loss")


def check_sparsity(target: float) -> float:
    if not 0.0 < float(target) < 1.0:
        raise ValueError(f"sparsity {target} is outside the open interval (0, 1)")
    return float(target)


def replacement_params(kind: str, manifest: dict[str, Any], start: int) -> int:
    """Parameters a replacement adds back for the window starting at `start` (what the method trains).

    `ffn`/`swiglu` count the MLP block and its norm; the zero attention stored to keep the checkpoint
    loadable by stock transformers is reported separately as checkpoint overhead, not as method cost.
    """
    if kind in ("none", "lora"):
        return 0  # LoRA adapters are merged into the remaining weights
    if kind == "lm-loss":
        kind = "ffn"
    if kind == "linear":
        return int(manifest["hidden_size"]) ** 2
    if kind in ("ffn", "swiglu"):
        return int(manifest["mlp_params"][start])
    if kind == "layer":
        return int(manifest["layer_params"][start])
    raise ValueError(f"healing {kind!r} is unknown; allowed: {', '.join(HEALINGS)}")


def check_healing(healing: str) -> None:
    if healing not in HEALINGS:
        raise ValueError(f"healing {healing!r} is unknown; allowed: {', '.join(HEALINGS)}")


def plan_pruning(table: pd.DataFrame, manifest: dict[str, Any], target: float, replacement: str) -> dict[str, Any]:
    """Smallest window length whose net parameter removal reaches `target`, and its best window.

    sparsity = (params of removed layers - replacement params) / params of the dense model.
    """
    target = check_sparsity(target)
    check_healing(replacement)
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
                "healing": replacement,
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
                "num_layers_after": num_layers - n + (1 if replacement in ("ffn", "swiglu", "layer", "lm-loss") else 0),
            }
    raise ValueError(
        f"sparsity {target} needs more layers than the model has: removing up to {num_layers - 1} of "
        f"{num_layers} layers with replacement {replacement!r} reaches at most {best_reach:.4f}"
    )


def plan_from_order(
    order: list[int], manifest: dict[str, Any], target: float, healing: str, merges: list[dict] | None = None
) -> dict[str, Any]:
    """The shortest prefix of `order` whose parameters reach `target` (layers need not be consecutive).

    With `merges` (LaCo), `order` lists the merged-away layers merge by merge and the prefix ends on a merge.
    """
    target = check_sparsity(target)
    check_healing(healing)
    if healing in WINDOW_HEALINGS:
        raise ValueError(f"healing {healing!r} needs one window of consecutive layers; this method allows none, lora")
    total = int(manifest["parameters"])
    layer_params = [int(p) for p in manifest["layer_params"]]
    ends = [len(order)] if merges is None else []
    if merges is not None:
        count = 0
        for merge in merges:
            count += len(merge["merged"])
            ends.append(count)
    removed: list[int] = []
    used = None
    for k in range(1, len(order) + 1):
        if merges is None or k in ends:
            if sum(layer_params[i] for i in order[:k]) / total >= target:
                removed, used = order[:k], k
                break
    if used is None:
        reach = sum(layer_params[i] for i in order) / total
        raise ValueError(
            f"sparsity {target} needs more layers than the method's order covers: at most {reach:.4f} "
            f"({len(order)} of {len(layer_params)} layers)"
        )
    params_removed = sum(layer_params[i] for i in removed)
    plan = {
        "target_sparsity": target,
        "actual_sparsity": params_removed / total,
        "healing": healing,
        "start_layer": None,
        "num_layers_removed": len(removed),
        "removed_layers": sorted(removed),
        "removal_order": list(removed),
        "params_dense": total,
        "params_removed": params_removed,
        "params_replacement": 0,
        "params_after": total - params_removed,
        "num_layers_dense": len(layer_params),
        "num_layers_after": len(layer_params) - len(removed),
    }
    if merges is not None:
        plan["merges"] = [m for m, end in zip(merges, ends) if end <= used]
    return plan


def last_n_table(num_layers: int) -> pd.DataFrame:
    """A window table in which the only candidate of each length ends just before the final layer."""
    rows = [
        (start, n, 1.0 if start + n == num_layers - 1 else 0.0, "cosine")
        for n in range(1, num_layers)
        for start in range(0, num_layers - n + 1)
    ]
    return pd.DataFrame(rows, columns=["start_layer", "num_layers", "score", "metric"])


def apply_plan(model: PreTrainedModel, plan: dict[str, Any]) -> None:
    """Remove the plan's layers; LaCo plans first merge each group into its base layer, in the recorded order."""
    from streamline.criteria import merge_layer_params

    layers = decoder_layers(model)
    for merge in plan.get("merges", []):
        base = layers[merge["base"]]
        others = [layers[i].state_dict() for i in merge["merged"]]
        base.load_state_dict(merge_layer_params(base.state_dict(), others))
    removed = set(plan["removed_layers"])
    keep_layers(model, [i for i in range(len(layers)) if i not in removed])


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
