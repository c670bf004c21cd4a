"""Residual-stream states of a decoder-only model, captured with forward hooks.

States are numbered h_0 .. h_L: h_0 enters layer 0 (the embeddings) and h_j leaves layer j-1. All of them
are pre-final-norm residual states, so every window (i, n) compares h_i with h_{i+n} on the same footing.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel

from streamline.acquisition.families import base_model, decoder_layers


class _StopForward(Exception):
    """Raised from a hook to end a forward pass once the last needed state is captured."""


def _hidden_from_call(args: tuple, kwargs: dict) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


@torch.no_grad()
def residual_states(model: PreTrainedModel, input_ids: torch.Tensor, upto: int | None = None) -> list[torch.Tensor]:
    """Return [h_0, ..., h_k] for one batch, where k = `upto` (default: all L layers).

    The forward stops right after layer k-1, so caching the states of an early window does not pay for the
    rest of the model; neither the final norm nor the LM head is ever run.
    """
    layers = decoder_layers(model)
    total = len(layers)
    k = total if upto is None else upto
    if not 0 <= k <= total:
        raise ValueError(f"upto={k} is outside 0..{total}")
    states: list[torch.Tensor] = []

    def grab_input(_module, args, kwargs):
        states.append(_hidden_from_call(args, kwargs))
        if k == 0:
            raise _StopForward

    def grab_output(_module, _args, _kwargs, output):
        states.append(output[0] if isinstance(output, tuple) else output)
        if len(states) == k + 1:
            raise _StopForward

    handles = [layers[0].register_forward_pre_hook(grab_input, with_kwargs=True)]
    handles += [layers[j].register_forward_hook(grab_output, with_kwargs=True) for j in range(k)]
    try:
        base_model(model)(input_ids=input_ids.to(model.device), use_cache=False)
    except _StopForward:
        pass
    finally:
        for handle in handles:
            handle.remove()
    return states
