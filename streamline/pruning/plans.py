"""Pruning plans: target sparsity -> number of layers n -> the most redundant window, or a prefix of a layer order.

Plans are arithmetic on the manifest's parameter counts; the model itself is changed by surgery.py. Which
healing kinds exist, and what each puts in the window, is the registry in healing/kinds.py; what a module adds back
is its entry in healing/modules.py.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pandas as pd
from safetensors import safe_open

from streamline.acquisition.checkpoint_files import checkpoint_parameters
from streamline.healing import kinds as healing_kinds
from streamline.healing import modules
from streamline.importance.windows import best_window

LAYER_KEY = re.compile(r"(?:^|\.)layers\.(\d+)\.")  # a decoder layer's weight: ...layers.{i}....
# What a target sparsity is a fraction of: the decoder layers' parameters, or all parameters (embeddings too).
SPARSITY_OF = ("layers", "all")


def check_sparsity(target: float) -> float:
    if not 0.0 < float(target) < 1.0:
        raise ValueError(f"sparsity {target} is outside the open interval (0, 1)")
    return float(target)


def check_layer_count(n: int, most: int, why: str) -> int:
    """A number of layers to remove: an integer from 1 to `most` (`why` says where the bound comes from)."""
    if isinstance(n, bool) or int(n) != n or not 1 <= int(n) <= most:
        raise ValueError(f"prune_layers {n} is not a layer count from 1 to {most}: {why}")
    return int(n)


def sparsity_denominator(manifest: dict[str, Any], sparsity_of: str) -> int:
    """Parameters a sparsity is a fraction of: every decoder layer's (`layers`) or the whole dense model's (`all`)."""
    if sparsity_of == "layers":
        return sum(int(p) for p in manifest["layer_params"])
    if sparsity_of == "all":
        return int(manifest["parameters"])
    raise ValueError(f"sparsity_of {sparsity_of!r} is unknown; allowed: {', '.join(SPARSITY_OF)}")


def replacement_params(healing: str, manifest: dict[str, Any], start: int) -> int:
    """Parameters the kind `healing` adds back for the window starting at `start` (what the method trains or fits
    and stores in the window): its module's count (modules.WindowModule.params), 0 for a kind without a module
    (none, lora, last-layers: nothing in the window; replaceme: its map is fused into a kept layer).

    `ffn`: fc1 (d x 4d + 4d bias) and fc2 (4d x d + d bias) = 8 d^2 + 5 d. `swiglu` counts the MLP block and its
    norm; the zero attention stored to keep the checkpoint loadable by stock transformers is reported separately
    as checkpoint overhead, not as method cost. `layer` and `lm-loss`: one decoder layer.
    """
    module = healing_kinds.get(healing).module
    return 0 if module is None else modules.get(module).params(manifest, start)


def check_healing(healing: str) -> None:
    healing_kinds.get(healing)


def plan_pruning(
    table: pd.DataFrame, manifest: dict[str, Any], target: float, replacement: str, sparsity_of: str
) -> dict[str, Any]:
    """Smallest window length whose net parameter removal reaches `target`, and its best window.

    sparsity = (params of removed layers - replacement params) / the `sparsity_of` denominator
    (`layers`: all decoder-layer parameters; `all`: every parameter of the dense model).
    """
    target = check_sparsity(target)
    check_healing(replacement)
    num_layers = len(manifest["layer_params"])
    best_reach = 0.0
    for n in range(1, num_layers):
        plan = _window_plan(table, manifest, n, replacement, sparsity_of)
        best_reach = max(best_reach, plan["actual_sparsity"])
        if plan["actual_sparsity"] >= target:
            return {**_target_fields(target, None, sparsity_of), **plan}
    raise ValueError(
        f"sparsity {target} needs more layers than the model has: removing up to {num_layers - 1} of "
        f"{num_layers} layers with replacement {replacement!r} reaches at most {best_reach:.4f} "
        f"(sparsity_of: {sparsity_of})"
    )


def plan_layers(
    table: pd.DataFrame, manifest: dict[str, Any], n: int, replacement: str, sparsity_of: str
) -> dict[str, Any]:
    """Remove exactly `n` consecutive layers: the best window of length n (a replacement takes their place)."""
    check_healing(replacement)
    num_layers = len(manifest["layer_params"])
    n = check_layer_count(n, num_layers - 1, f"a window removes at most {num_layers - 1} of {num_layers} layers")
    return {**_target_fields(None, n, sparsity_of), **_window_plan(table, manifest, n, replacement, sparsity_of)}


def _target_fields(sparsity: float | None, layers: int | None, sparsity_of: str) -> dict[str, Any]:
    """What was asked: a sparsity or a number of layers (the other is None), and what sparsity counts."""
    return {"target_sparsity": sparsity, "target_layers": layers, "sparsity_of": sparsity_of}


def _window_plan(
    table: pd.DataFrame, manifest: dict[str, Any], n: int, replacement: str, sparsity_of: str
) -> dict[str, Any]:
    """The plan removing the best window of length `n`, with its sparsity counted over `sparsity_of`."""
    denominator = sparsity_denominator(manifest, sparsity_of)
    total = int(manifest["parameters"])
    layer_params = [int(p) for p in manifest["layer_params"]]
    window = best_window(table, n)
    start = int(window["start_layer"])
    removed = sum(layer_params[start : start + n])
    added = replacement_params(replacement, manifest, start)
    return {
        "actual_sparsity": (removed - added) / denominator,
        "sparsity_denominator": denominator,
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
        "num_layers_dense": len(layer_params),
        "num_layers_after": len(layer_params) - n + (1 if healing_kinds.get(replacement).decoder_layer else 0),
    }


def plan_from_order(
    order: list[int],
    manifest: dict[str, Any],
    target: float,
    healing: str,
    sparsity_of: str,
    merges: list[dict] | None = None,
) -> dict[str, Any]:
    """The shortest prefix of `order` whose parameters reach `target` (layers need not be consecutive).

    With `merges` (LaCo), `order` lists the merged-away layers merge by merge and the prefix ends on a merge.
    """
    target = check_sparsity(target)
    _check_order_healing(healing)
    denominator = sparsity_denominator(manifest, sparsity_of)
    layer_params = [int(p) for p in manifest["layer_params"]]
    ends = list(range(1, len(order) + 1)) if merges is None else _merge_ends(merges)
    for k in ends:
        if sum(layer_params[i] for i in order[:k]) / denominator >= target:
            plan = _order_plan(order, manifest, k, healing, sparsity_of, merges)
            return {**_target_fields(target, None, sparsity_of), **plan}
    reach = sum(layer_params[i] for i in order) / denominator
    raise ValueError(
        f"sparsity {target} needs more layers than the method's order covers: at most {reach:.4f} "
        f"({len(order)} of {len(layer_params)} layers, sparsity_of: {sparsity_of})"
    )


def plan_order_layers(
    order: list[int],
    manifest: dict[str, Any],
    n: int,
    healing: str,
    sparsity_of: str,
    merges: list[dict] | None = None,
) -> dict[str, Any]:
    """Remove exactly the first `n` layers of `order`.

    With `merges` (LaCo) a prefix that ends inside a merge keeps that merge's first layers only (the group is
    merged into its base partially, marked `truncated`), so every n up to the order's length is reachable.
    """
    _check_order_healing(healing)
    num_layers = len(manifest["layer_params"])
    n = check_layer_count(n, len(order), f"the method's order covers {len(order)} of {num_layers} layers")
    return {**_target_fields(None, n, sparsity_of), **_order_plan(order, manifest, n, healing, sparsity_of, merges)}


def _check_order_healing(healing: str) -> None:
    if healing_kinds.get(healing).window:
        allowed = ", ".join(name for name, kind in healing_kinds.HEALING_KINDS.items() if not kind.window)
        raise ValueError(f"healing {healing!r} needs one window of consecutive layers; this method allows {allowed}")


def _merge_ends(merges: list[dict]) -> list[int]:
    """Prefix lengths of the order at which each merge is complete."""
    ends, count = [], 0
    for merge in merges:
        count += len(merge["merged"])
        ends.append(count)
    return ends


def _order_plan(
    order: list[int], manifest: dict[str, Any], k: int, healing: str, sparsity_of: str, merges: list[dict] | None
) -> dict[str, Any]:
    """The plan removing the first `k` layers of `order` (and replaying the merges that cover them)."""
    denominator = sparsity_denominator(manifest, sparsity_of)
    total = int(manifest["parameters"])
    layer_params = [int(p) for p in manifest["layer_params"]]
    removed = list(order[:k])
    params_removed = sum(layer_params[i] for i in removed)
    plan = {
        "actual_sparsity": params_removed / denominator,
        "sparsity_denominator": denominator,
        "healing": healing,
        "start_layer": None,
        "num_layers_removed": len(removed),
        "removed_layers": sorted(removed),
        "removal_order": removed,
        "params_dense": total,
        "params_removed": params_removed,
        "params_replacement": 0,
        "params_after": total - params_removed,
        "num_layers_dense": len(layer_params),
        "num_layers_after": len(layer_params) - len(removed),
    }
    if merges is not None:
        kept, start = [], 0
        for merge, end in zip(merges, _merge_ends(merges)):
            if start >= k:
                break
            if end <= k:
                kept.append(merge)
            else:  # the prefix ends inside this merge: merge only its first layers
                kept.append({**merge, "merged": list(merge["merged"][: k - start]), "truncated": True})
            start = end
        plan["merges"] = kept
    return plan


def last_n_table(num_layers: int) -> pd.DataFrame:
    """A window table in which the only candidate of each length ends just before the final layer."""
    rows = [
        (start, n, 1.0 if start + n == num_layers - 1 else 0.0, "cosine")
        for n in range(1, num_layers)
        for start in range(0, num_layers - n + 1)
    ]
    return pd.DataFrame(rows, columns=["start_layer", "num_layers", "score", "metric"])


def check_plan(plan: dict[str, Any], manifest: dict[str, Any]) -> dict[str, Any]:
    """A plan as made, checked against the dense model's manifest before it is written: its removed layers are
    distinct indices of the model, and every count it claims (layers removed and left, parameters removed, added
    and left, the sparsity) is the arithmetic of those layers, so all.csv can never report what did not happen.
    Returns the plan; one line naming the first contradiction otherwise."""
    layer_params = [int(p) for p in manifest["layer_params"]]
    num_layers = len(layer_params)
    method = plan.get("method", "?")

    def refuse(problem: str) -> ValueError:
        return ValueError(f"the plan of method {method!r} is inconsistent with the model: {problem}")

    removed = plan["removed_layers"]
    if any(isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < num_layers for i in removed):
        raise refuse(f"removed_layers {removed} are not all layer indices 0..{num_layers - 1}")
    if len(set(removed)) != len(removed) or not removed:
        raise refuse(f"removed_layers {removed} are not distinct layers (or none)")
    kind = healing_kinds.get(plan["healing"])
    start = plan.get("start_layer")
    if start is not None and removed != list(range(start, start + len(removed))):
        raise refuse(f"removed_layers {removed} are not the window of {len(removed)} layers from {start}")
    merges = plan.get("merges", [])
    for position, merge in enumerate(merges):
        # LaCo's groups overlap (the sweep moves down by `interval` < the group's size), so a base may itself be
        # merged into a lower base by a LATER merge; it must never be a layer already merged away
        later = {i for m in merges[position + 1 :] for i in m["merged"]}
        earlier = {i for m in merges[:position] for i in m["merged"]}
        if not set(merge["merged"]) <= set(removed):
            raise refuse(f"merge {merge} merges layers that are not among removed_layers {removed}")
        if merge["base"] in earlier or (merge["base"] in removed and merge["base"] not in later):
            raise refuse(f"merge {merge} merges into layer {merge['base']}, which the plan removes")
    params_removed = sum(layer_params[i] for i in removed)
    added = replacement_params(plan["healing"], manifest, start) if start is not None else 0
    denominator = sparsity_denominator(manifest, plan["sparsity_of"])
    expected = {
        "num_layers_removed": len(removed),
        "num_layers_dense": num_layers,
        "num_layers_after": num_layers - len(removed) + (1 if kind.decoder_layer and start is not None else 0),
        "params_dense": int(manifest["parameters"]),
        "params_removed": params_removed,
        "params_replacement": added,
        "params_after": int(manifest["parameters"]) - params_removed + added,
        "sparsity_denominator": denominator,
    }
    for key, value in expected.items():
        if plan[key] != value:
            raise refuse(f"{key} is {plan[key]}, but its layers {removed} give {value}")
    if abs(plan["actual_sparsity"] - (params_removed - added) / denominator) > 1e-12:
        raise refuse(f"actual_sparsity {plan['actual_sparsity']} is not (removed - added) / denominator")
    return plan


def expected_checkpoint_parameters(plan: dict[str, Any], manifest: dict[str, Any], dense_stored: int) -> int:
    """Parameters the compressed checkpoint must store: the dense checkpoint's (`dense_stored`, counted from its
    files) minus the removed layers, plus what takes their place as stored: a decoder layer for a kind stored as
    one (swiglu's zero attention included, which the plan reports as checkpoint overhead, not as method cost), the
    module's parameters for linear/ffn (the extra file beside the weights)."""
    added = plan["params_replacement"]
    if healing_kinds.get(plan["healing"]).decoder_layer and plan.get("start_layer") is not None:
        added = int(manifest["layer_params"][plan["start_layer"]])
    return dense_stored - plan["params_removed"] + added


def check_checkpoint_matches_plan(
    folder: str | Path, plan: dict[str, Any], manifest: dict[str, Any], dense_stored: int
) -> None:
    """After surgery: the compressed checkpoint in `folder` holds what its plan claims, read from its files (config
    num_hidden_layers, the decoder layers its weights cover, the parameters they store); one line otherwise.
    `dense_stored`: the parameters stored by the dense checkpoint the plan was made for."""
    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    layers = set()
    for shard in sorted(folder.glob("*.safetensors")):
        with safe_open(str(shard), framework="numpy") as fh:  # keys only: no tensor read, no torch imported
            layers |= {int(m.group(1)) for key in fh.keys() if (m := LAYER_KEY.search(key))}  # noqa: SIM118
    stored = checkpoint_parameters(folder)
    want_layers = plan["num_layers_after"]
    found = {
        "config.json num_hidden_layers": (config.get("num_hidden_layers"), want_layers),
        "decoder layers in the weights": (len(layers), want_layers),
        "stored parameters": (stored, expected_checkpoint_parameters(plan, manifest, dense_stored)),
    }
    for what, (value, expected) in found.items():
        if value != expected:
            raise ValueError(
                f"the compressed checkpoint {str(folder)!r} does not match its plan: {what} is {value}, the plan "
                f"({plan['num_layers_removed']} layers removed of {plan['num_layers_dense']}, healing "
                f"{plan['healing']!r}) gives {expected}; the surgery or the healing kind's registry entry is wrong"
            )
