"""Perplexity with the standard protocol: join the text, cut fixed windows, stride = window, token-weighted NLL."""

from __future__ import annotations

import math
from typing import Any

import torch
from tqdm import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase


@torch.no_grad()
def perplexity(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    text: str,
    seq_len: int,
    batch_size: int = 4,
    max_windows: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """exp(total NLL / predicted tokens) over non-overlapping windows of `seq_len` tokens.

    Each window predicts its tokens 2..seq_len from the ones before it inside the window (no carried
    context), the SparseGPT/Wanda/ShortGPT recipe. A trailing partial window is dropped. `window_nll` lists each
    window's summed NLL (seq_len - 1 predicted tokens each), what the paired intervals resample (reporting/paired.py).
    """
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids[0]
    num_windows = ids.numel() // seq_len
    if max_windows is not None:
        num_windows = min(num_windows, max_windows)
    if num_windows == 0:
        raise ValueError(f"text has {ids.numel()} tokens, fewer than one window of {seq_len}")
    windows = ids[: num_windows * seq_len].view(num_windows, seq_len)
    total_nll, total_tokens, window_nll = 0.0, 0, []
    for lo in tqdm(range(0, num_windows, batch_size), desc="perplexity", disable=not progress):
        batch = windows[lo : lo + batch_size].to(model.device)  # [b, T]
        logits = model(batch, use_cache=False).logits[:, :-1].float()  # [b, T-1, V]
        # cross_entropy = nll_loss(log_softmax): the batch total exactly as before, per-window sums from the same
        logprobs = torch.log_softmax(logits.reshape(-1, logits.shape[-1]), dim=-1)  # [b (T-1), V]
        targets = batch[:, 1:].reshape(-1)  # [b (T-1)]
        nll = torch.nn.functional.nll_loss(logprobs, targets, reduction="sum")
        token_nll = -logprobs.gather(1, targets[:, None]).view(batch.shape[0], -1)  # [b, T-1]
        window_nll += token_nll.double().sum(dim=1).tolist()
        total_nll += nll.item()
        total_tokens += batch[:, 1:].numel()
    mean_nll = total_nll / total_tokens
    return {
        "perplexity": math.exp(mean_nll),
        "nll_per_token": mean_nll,
        "tokens": total_tokens,
        "windows": num_windows,
        "seq_len": seq_len,
        "window_nll": window_nll,
    }
