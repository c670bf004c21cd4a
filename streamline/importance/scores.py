"""Layer importance: similarity between the state entering a window of layers and the state leaving it, summed
over the calibration batches (the window table built from it: windows.py)."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from tqdm import tqdm
from transformers import PreTrainedModel

from streamline.importance.hidden_states import residual_states
from streamline.importance.windows import METRICS
from streamline.numerics import NonFiniteError, nonfinite_cause


class WindowSimilarity:
    """Streaming sums of per-token cosine similarity between every pair of residual states.

    Memory is O(S^2) for S = L+1 states, whatever the number of calibration samples: each batch is
    reduced to pair sums before the next one is read.
    """

    def __init__(self, num_states: int, token_chunk: int = 4096):
        self.num_states = num_states
        self.token_chunk = token_chunk
        self.cos_sum = torch.zeros(num_states, num_states, dtype=torch.float64)
        self.angle_sum = torch.zeros_like(self.cos_sum)
        self.last_angle_sum = torch.zeros_like(self.cos_sum)
        self.tokens = 0
        self.sequences = 0

    @staticmethod
    def _pair_cosines(states: torch.Tensor) -> torch.Tensor:
        """states (S, N, D) -> per-token cosine for every state pair, (S, S, N), clamped to [-1, 1]."""
        unit = F.normalize(states.float(), dim=-1)
        return torch.einsum("and,bnd->abn", unit, unit).clamp_(-1.0, 1.0)

    def update(self, states: list[torch.Tensor]) -> None:
        stacked = torch.stack([s.to(states[0].device) for s in states])  # (S, B, T, D); layers may sit on several GPUs
        num_states, batch, seq, dim = stacked.shape
        flat = stacked.reshape(num_states, batch * seq, dim)
        for lo in range(0, flat.shape[1], self.token_chunk):
            cos = self._pair_cosines(flat[:, lo : lo + self.token_chunk])
            self.cos_sum += cos.sum(-1).double()
            self.angle_sum += torch.arccos_(cos).sum(-1).double() / math.pi
        last = self._pair_cosines(stacked[:, :, -1, :])
        self.last_angle_sum += torch.arccos_(last).sum(-1).double() / math.pi
        # A NaN/inf anywhere in the states makes its cosines NaN, so checking the sums is enough.
        if not torch.isfinite(self.cos_sum).all():
            first = next((i for i, s in enumerate(states) if not torch.isfinite(s).all()), 0)
            raise NonFiniteError(
                f"the hidden state h_{first} ({'the embeddings' if first == 0 else f'leaving layer {first - 1}'}) "
                f"holds NaN/Inf ({nonfinite_cause(states[first].dtype)})"
            )
        self.tokens += batch * seq
        self.sequences += batch

    def mean(self, metric: str) -> torch.Tensor:
        """(S, S) mean of `metric` for every state pair."""
        if metric == "cosine":
            return self.cos_sum / self.tokens
        if metric == "angular":
            return self.angle_sum / self.tokens
        if metric == "angular_last":
            return self.last_angle_sum / self.sequences
        raise ValueError(f"importance metric {metric!r} is unknown; allowed: {', '.join(METRICS)}")


def accumulate(model: PreTrainedModel, batches: Iterable[torch.Tensor], progress: bool = True) -> WindowSimilarity:
    """One forward pass per batch; returns the streaming pair sums of every residual state."""
    num_states = model.config.num_hidden_layers + 1
    acc = WindowSimilarity(num_states)
    for batch in tqdm(list(batches), desc="importance", disable=not progress):
        acc.update(residual_states(model, batch))
    return acc
