"""Size and speed of a checkpoint: parameters, layers, bytes on disk, prefill and decode throughput."""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel

from streamline.acquisition.models import dtype_name


def checkpoint_bytes(folder: str | Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).glob("*.safetensors"))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def throughput(
    model: PreTrainedModel, prompt_tokens: int, decode_tokens: int, batch_size: int = 1, repeats: int = 3
) -> dict[str, float]:
    """Median prefill and greedy-decode tokens/s over `repeats` runs after one warm-up, on a fixed prompt."""
    device = model.device
    generator = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, model.config.vocab_size, (batch_size, prompt_tokens), generator=generator).to(device)
    prefill, decode = [], []
    for attempt in range(repeats + 1):
        _sync(device)
        start = time.perf_counter()
        out = model(prompt, use_cache=True)
        _sync(device)
        prefill_s = time.perf_counter() - start
        cache, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
        start = time.perf_counter()
        for _ in range(decode_tokens):
            out = model(token, past_key_values=cache, use_cache=True)
            cache, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
        _sync(device)
        decode_s = time.perf_counter() - start
        if attempt:  # the first run is the warm-up
            prefill.append(batch_size * prompt_tokens / prefill_s)
            decode.append(batch_size * decode_tokens / decode_s)
    return {"prefill_tok_s": statistics.median(prefill), "decode_tok_s": statistics.median(decode)}


def model_stats(model: PreTrainedModel, folder: str | Path, speed: dict[str, Any]) -> dict[str, Any]:
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "num_layers": model.config.num_hidden_layers,
        "checkpoint_bytes": checkpoint_bytes(folder),
        "device": str(model.device),
        "dtype": dtype_name(model.dtype),
        **throughput(model, **speed),
    }
