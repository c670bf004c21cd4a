"""What a healing kind can put in place of the pruned window: one registry entry per module.

Each module declares how it is built (a trainable torch module and the function that applies it to the state
entering the window), how many parameters it adds back (the plan's arithmetic, pruning/plans.py) and how the
checkpoint stores it: beside the pruned weights as a checkpoint extra (acquisition/checkpoint.py EXTRA_KINDS), or
as one decoder layer in the window's first place. A healing kind names its module (kinds.py), so a module the
registry does not hold is an error at registration, never a guessed count.

- `linear`: x + W x, W = 0 at the start (this project's addition); stored as the `linear` extra.
- `ffn`: the paper's FFN, checkpoint.FeedForward (d -> 4d, ReLU, 4d -> d, biases; weights normal(0,
  initializer_range), biases zero; not residual, no norm; the official MLP example, cited in checkpoint.py), seeded
  by `training.seed`; stored as the `ffn` extra.
- `swiglu`: the model's own MLP block with its norm(s), x + MLP(norm(x)), copied from a pruned layer (each family's
  block: families.mlp_block); stored as a decoder layer whose attention output projection is zero.
- `layer`: a whole decoder layer copied from a pruned layer (RUCKBReasoning/LLM-Streamline,
  LLM_Streamline/train_lightweightnetwork.py `init_layer`, lines 126-181); run alone as the compressed model runs it
  at the window's first place (families.standalone_forward), causally, or without a mask under the official recipe
  (recipes.py; docs/deviations.md).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from streamline.acquisition.checkpoint_files import EXTRA_NAMES

if TYPE_CHECKING:  # the registry is read at Snakemake's parse, which imports no torch; the builders import it
    import torch
    from transformers import PreTrainedModel

    Apply = Callable[[torch.Tensor], torch.Tensor]  # (B, T, d) state entering the window -> the state after it


@dataclass(frozen=True)
class WindowModule:
    """One module a healing kind can put in the window.

    `build(model, source, position, seed, attention)` -> (trainable module, apply): `source` is the pruned layer a
    layer copy starts from, `position` the place it runs at. `params(manifest, start)`: the parameters it adds
    back for the window starting at `start` (method cost; a stored zero attention is checkpoint overhead).
    `extra`: the checkpoint extra it is stored as (checkpoint_files.EXTRA_NAMES), or None when it is stored as a
    decoder layer.
    `copies_layer`: it starts from a copy of one pruned layer, so the start-layer rules (training.init_layer,
    the `-bestfit` kinds) apply to it.
    """

    name: str
    build: Callable[[PreTrainedModel, int, int, int, str], tuple[torch.nn.Module, Apply]]
    params: Callable[[dict[str, Any], int], int]
    extra: str | None = None
    copies_layer: bool = False

    @property
    def decoder_layer(self) -> bool:
        """Stored as one decoder layer in place of the window (the extras are stored beside the weights)."""
        return self.extra is None


def _linear(model: PreTrainedModel, source: int, position: int, seed: int, attention: str):
    from streamline.acquisition.checkpoint import ResidualLinear

    module = ResidualLinear(model.config.hidden_size)
    return module, module


def _ffn(model: PreTrainedModel, source: int, position: int, seed: int, attention: str):
    from streamline.acquisition.checkpoint import FeedForward
    from streamline.acquisition.families import initializer_std

    module = FeedForward(model.config.hidden_size, initializer_std(model.config), seed)
    return module, module


def _swiglu(model: PreTrainedModel, source: int, position: int, seed: int, attention: str):
    """A copy of layer `source` whose attention output projection (weight and any bias) is zeroed and frozen, so the
    layer computes exactly its family's MLP block (Gemma3: x + post_ff_norm(mlp(pre_ff_norm(x))), OPT:
    x + fc2(act(fc1(final_layer_norm(x))))) and still loads as a stock decoder layer."""
    from streamline.acquisition.families import attention_output, decoder_layers, mlp_block, mlp_block_modules

    layer = copy.deepcopy(decoder_layers(model)[source]).float()
    for param in layer.parameters():
        param.requires_grad_(False)
    for param in attention_output(layer).parameters():
        param.data.zero_()
    for sub in mlp_block_modules(layer):
        for param in sub.parameters():
            param.requires_grad_(True)
    return layer, lambda hidden: mlp_block(layer, hidden)


def _layer(model: PreTrainedModel, source: int, position: int, seed: int, attention: str):
    """A copy of layer `source` run as the compressed model runs it at `position`: that position's full or
    sliding-window mask (or none, `bidirectional`) and rotary embedding."""
    from streamline.acquisition.families import decoder_layers, standalone_forward

    layer = copy.deepcopy(decoder_layers(model)[source]).float()
    return layer, standalone_forward(model, layer, position, attention)


MODULES: dict[str, WindowModule] = {}


def register(module: WindowModule) -> WindowModule:
    """Add `module` to the registry (once); a stored extra must be one the checkpoint loader knows."""
    if module.name in MODULES:
        raise ValueError(f"window module {module.name!r} is already registered")
    if module.extra is not None and module.extra not in EXTRA_NAMES:
        raise ValueError(
            f"window module {module.name!r}: extra {module.extra!r} is not a checkpoint extra; "
            f"allowed: {', '.join(EXTRA_NAMES)}"
        )
    MODULES[module.name] = module
    return module


def get(name: str) -> WindowModule:
    """The registered module `name`; an unknown name is one line naming it and the known ones."""
    if name not in MODULES:
        raise ValueError(f"window module {name!r} is unknown; allowed: {', '.join(MODULES)}")
    return MODULES[name]


register(WindowModule("linear", _linear, lambda manifest, start: int(manifest["hidden_size"]) ** 2, extra="linear"))
# fc1 (d x 4d + 4d bias) and fc2 (4d x d + d bias) = 8 d^2 + 5 d
register(
    WindowModule(
        "ffn", _ffn, lambda manifest, start: 8 * int(manifest["hidden_size"]) ** 2 + 5 * int(manifest["hidden_size"]),
        extra="ffn",
    )
)
# the MLP block and its norm; the zero attention kept for stock loading is checkpoint overhead, not method cost
register(WindowModule("swiglu", _swiglu, lambda manifest, start: int(manifest["mlp_params"][start]), copies_layer=True))
register(WindowModule("layer", _layer, lambda manifest, start: int(manifest["layer_params"][start]), copies_layer=True))
