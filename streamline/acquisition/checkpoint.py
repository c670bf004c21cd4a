"""Compressed checkpoints: stock transformers folders, plus the project's loader for the `linear` and `ffn` kinds.

`none`, `layer`, `swiglu` (and their `-bestfit` variants), `lm-loss` and `lora` results are plain HF checkpoints.
A `linear` or `ffn` result is the pruned model (stock-loadable, without the module) plus
`streamline_{kind}.safetensors`; `load_model` re-attaches the module as a pre-hook on the layer (or final norm)
that follows the removed window. Stock `AutoModelForCausalLM.from_pretrained` loads such a folder WITHOUT the
module, i.e. as plain removal of the window.

`FeedForward` is the paper's FFN as the official code defines it (RUCKBReasoning/LLM-Streamline,
examples/mlp_mseloss_train_without_memory_issue/modeling_llama.py): class `MLP`, lines 59-70, is
`fc2(ReLU(fc1(x)))` with `fc1: d -> 4d` and `fc2: 4d -> d`, both `nn.Linear` with bias; it is created in
`LlamaModel.__init__` (line 915) and initialised by `post_init` -> `_init_weights` (lines 805-810: weights
normal(0, initializer_range), biases zero); `forward` feeds it the residual state leaving the last kept layer and
uses its output directly as the prediction of the state after the window (lines 1038-1040, 1055), so it is not
residual and has no norm. No deviation from that definition.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from streamline.acquisition.checkpoint_files import EXTRA_FILES, EXTRA_NAMES, EXTRAS_FILE
from streamline.acquisition.families import decoder_layers, final_norm
from streamline.atomic import read_json, staged_dir, write_json


class ResidualLinear(torch.nn.Module):
    """x + W x with W initialised to zero, so training starts from plain layer removal."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(hidden_size, hidden_size))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:  # (B, T, d) -> (B, T, d)
        return hidden + torch.nn.functional.linear(hidden, self.weight)


class FeedForward(torch.nn.Module):
    """The paper's FFN: fc2(ReLU(fc1(x))), d -> 4d -> d with biases; not residual, no norm (module docstring)."""

    def __init__(self, hidden_size: int, std: float = 0.02, seed: int = 0):
        super().__init__()
        self.fc1 = torch.nn.Linear(hidden_size, 4 * hidden_size)
        self.fc2 = torch.nn.Linear(4 * hidden_size, hidden_size)
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for linear in (self.fc1, self.fc2):
                linear.weight.copy_(torch.randn(linear.weight.shape, generator=generator) * std)
                linear.bias.zero_()

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:  # (B, T, d) -> (B, T, 4d) -> (B, T, d)
        return self.fc2(torch.relu(self.fc1(hidden)))


EXTRA_KINDS: dict[str, type[torch.nn.Module]] = {"linear": ResidualLinear, "ffn": FeedForward}
if tuple(EXTRA_KINDS) != EXTRA_NAMES:  # checkpoint_files.EXTRA_NAMES names them for code that loads no torch
    raise ValueError(f"checkpoint extras {tuple(EXTRA_KINDS)} differ from checkpoint_files.EXTRA_NAMES {EXTRA_NAMES}")


def extra_kind(module: torch.nn.Module) -> str:
    for kind, cls in EXTRA_KINDS.items():
        if isinstance(module, cls):
            return kind
    raise ValueError(f"module {type(module).__name__} is not a stored extra; allowed: {', '.join(EXTRA_KINDS)}")


def _insertion_point(model: PreTrainedModel, position: int) -> torch.nn.Module:
    layers = decoder_layers(model)
    return layers[position] if position < len(layers) else final_norm(model)


def attach_replacement(model: PreTrainedModel, module: torch.nn.Module, position: int) -> None:
    """Apply `module` to the residual stream entering layer `position` (or the final norm)."""
    module.to(device=model.device, dtype=model.dtype)

    def apply(_module, args, kwargs):
        if args:
            return (module(args[0]), *args[1:]), kwargs
        kwargs["hidden_states"] = module(kwargs["hidden_states"])
        return args, kwargs

    _insertion_point(model, position).register_forward_pre_hook(apply, with_kwargs=True)


def attach_extras(model: PreTrainedModel, path: str | Path) -> None:
    """Re-attach the `linear`/`ffn` module a checkpoint folder stores next to its weights (if any)."""
    extras_path = Path(path) / EXTRAS_FILE
    if not extras_path.is_file():
        return
    extras = read_json(extras_path)
    for kind, cls in EXTRA_KINDS.items():
        if kind not in extras:
            continue
        state = load_file(Path(path) / extras[kind]["file"])
        module = cls(int(model.config.hidden_size))
        module.load_state_dict(state)
        attach_replacement(model, module, int(extras[kind]["position"]))


def save_checkpoint(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    out_dir: str | Path,
    extra: tuple[torch.nn.Module, int] | None = None,
) -> None:
    """Write the model, tokenizer and any extra module (linear/ffn at a position) via a staging folder."""
    with staged_dir(out_dir) as stage:
        model.save_pretrained(stage)
        tokenizer.save_pretrained(stage)
        extras: dict[str, Any] = {}
        if extra is not None:
            module, position = extra
            kind = extra_kind(module)
            state = {k: v.detach().to(model.dtype).contiguous().cpu() for k, v in module.state_dict().items()}
            save_file(state, stage / EXTRA_FILES[kind])
            extras[kind] = {"file": EXTRA_FILES[kind], "position": position}
        write_json(stage / EXTRAS_FILE, extras)
