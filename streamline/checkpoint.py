"""Compressed checkpoints: stock transformers folders, plus the project's loader for the `linear` kind.

`none`, `layer`, `ffn` and `swiglu` results are plain HF checkpoints. A `linear` result is the pruned
model (stock-loadable, without the map) plus `streamline_linear.safetensors`; `load_model` re-attaches
the map as a pre-hook on the layer (or final norm) that follows the removed window.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from streamline.atomic import read_json, staged_dir, write_json
from streamline.hidden_states import decoder_layers

EXTRAS_FILE = "streamline_extras.json"
LINEAR_FILE = "streamline_linear.safetensors"


class ResidualLinear(torch.nn.Module):
    """x + W x with W initialised to zero, so training starts from plain layer removal."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(hidden_size, hidden_size))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden + torch.nn.functional.linear(hidden, self.weight)


def _insertion_point(model: PreTrainedModel, position: int) -> torch.nn.Module:
    layers = decoder_layers(model)
    return layers[position] if position < len(layers) else model.model.norm


def attach_linear(model: PreTrainedModel, linear: ResidualLinear, position: int) -> None:
    """Apply `linear` to the residual stream entering layer `position` (or the final norm)."""
    linear.to(device=model.device, dtype=model.dtype)

    def apply(_module, args, kwargs):
        if args:
            return (linear(args[0]), *args[1:]), kwargs
        kwargs["hidden_states"] = linear(kwargs["hidden_states"])
        return args, kwargs

    _insertion_point(model, position).register_forward_pre_hook(apply, with_kwargs=True)


def attach_extras(model: PreTrainedModel, path: str | Path) -> None:
    extras_path = Path(path) / EXTRAS_FILE
    if not extras_path.is_file():
        return
    extras = read_json(extras_path)
    if "linear" in extras:
        weight = load_file(Path(path) / extras["linear"]["file"])["weight"]
        linear = ResidualLinear(weight.shape[0])
        linear.weight.data.copy_(weight)
        attach_linear(model, linear, int(extras["linear"]["position"]))


def save_checkpoint(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    out_dir: str | Path,
    linear: tuple[ResidualLinear, int] | None = None,
) -> None:
    """Write the model, tokenizer and any extras into `out_dir` via a staging folder."""
    with staged_dir(out_dir) as stage:
        model.save_pretrained(stage)
        tokenizer.save_pretrained(stage)
        extras: dict[str, Any] = {}
        if linear is not None:
            module, position = linear
            save_file({"weight": module.weight.detach().to(model.dtype).contiguous().cpu()}, stage / LINEAR_FILE)
            extras["linear"] = {"file": LINEAR_FILE, "position": position}
        write_json(stage / EXTRAS_FILE, extras)
