"""Per-choice PPL scores of multiple-choice examples, as OpenCompass's PPL mode defines them, at little extra cost.

OpenCompass scores a choice by the mean cross-entropy per token of the WHOLE prompt, context + choice
(`opencompass/models/huggingface.py`, `HuggingFace._get_ppl`, lines 494-533 at commit a5acc4bb): logits shifted by
one, token-level cross-entropy with padding ignored, summed over the sequence and divided by `lens`, the number of
non-padding tokens of the prompt. `lens` includes the first token, which is never predicted, so the divisor is
n tokens although n - 1 are predicted (the BOS for tokenizers that add one, else the first text token).
OpenCompass tokenizes with the tokenizer's defaults (`get_logits`, lines 441-466), as the harness does when
`add_bos_token` is unset (`HFLM.tok_encode`), so a BOS is added exactly when the tokenizer adds one. What differs
from the paper's numbers is the prompt: the harness's task templates, not OpenCompass's.

The harness already scores every choice: its HFLM encodes `context + continuation` once and splits the tokens at
len(encode(context)) (lm-eval 0.4.13 `lm_eval/api/model.py` lines 393-431, `LM._encode_pair`; an empty context
becomes the prefix token, `LM.loglikelihood` lines 433-471), feeds (context + continuation)[-(max_length+1):][:-1]
right-padded with zeros (`lm_eval/models/huggingface.py` lines 1435-1439 and 1482-1485, `pad_and_concat` in
`lm_eval/models/utils_hf.py`), then logs the summed log-likelihood of the continuation tokens given the context
(`resps`). So, with the same split,

    NLL(context + continuation) = NLL(context tokens 1..|C|-1, each from the ones before it) - loglik(continuation)

The context part is in the harness's own forward pass too: it feeds (context + continuation)[:-1] and keeps only
the continuation positions. `capture_input_logprobs` wraps the HFLM's `_model_call` to also record every input
token's log-probability, so the scores cost no second forward. The shared-context scorer
(`shared_context.SharedContextLM`, the default `evaluation.scorer`) computes each shared context once instead of
once per choice; it records its rows' log-probabilities in the same store (`record_row`), so the PPL scores read
one store whichever path scored a task. Contexts the store lacks (no capture, or a row it could not match) get a
batched forward of their own, once per distinct context token sequence.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from streamline.evaluation.choice_metrics import gold_choices, record_gold_logprob
from streamline.evaluation.stability import example_record

EncodePair = Callable[[str, str], tuple[list[int], list[int]]]


def harness_encoder(lm: Any) -> EncodePair:
    """The (context tokens, continuation tokens) split an lm-eval HFLM scores a request with."""

    def encode(context: str, continuation: str) -> tuple[list[int], list[int]]:
        if context == "":  # LM.loglikelihood: the prefix token (BOS/EOS) stands in for an empty context
            cont = lm.tok_encode(continuation, add_special_tokens=False)
            return ([lm.prefix_token_id], cont) if lm.prefix_token_id != cont[0] else (cont[:1], cont[1:])
        context_enc, continuation_enc = lm._encode_pair(context, continuation)
        return list(context_enc), list(continuation_enc)

    return encode


@torch.no_grad()
def sequence_nll(model: torch.nn.Module, sequences: Sequence[Sequence[int]], batch_size: int = 8) -> list[float]:
    """Summed NLL of tokens 1..n-1 of each sequence, each predicted from the tokens before it (token 0 is given).

    Sequences are sorted by length and right-padded per batch; padding is masked out of the attention and the sum.
    """
    device = next(model.parameters()).device
    out = [0.0] * len(sequences)
    order = sorted((i for i, s in enumerate(sequences) if len(s) > 1), key=lambda i: -len(sequences[i]))
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        width = len(sequences[chunk[0]])
        ids = torch.zeros(len(chunk), width, dtype=torch.long)  # [b, T]
        mask = torch.zeros(len(chunk), width, dtype=torch.long)  # [b, T]
        for row, i in enumerate(chunk):
            ids[row, : len(sequences[i])] = torch.tensor(list(sequences[i]), dtype=torch.long)
            mask[row, : len(sequences[i])] = 1
        ids, mask = ids.to(device), mask.to(device)
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()  # [b, T-1, V]
        nll = F.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")  # [b, T-1]
        sums = (nll * mask[:, 1:]).sum(dim=1)  # [b]
        for row, i in enumerate(chunk):
            out[i] = float(sums[row])
    return out


def continuation_loglik(sample: dict[str, Any], choice: int) -> float:
    """The harness's summed log-likelihood of one choice's continuation (raw `resps`, before any filter)."""
    resp = sample["resps"][choice][0]
    return float(resp[0])


Captured = dict[bytes, torch.Tensor]  # harness input row (right padding stripped) -> its input tokens' log-probs


def _row_key(row: Sequence[int]) -> tuple[bytes, int]:
    """(key, length) of a harness input row without its right padding (zeros): compact bytes, not a tuple of ints."""
    n = len(row)
    while n > 1 and row[n - 1] == 0:
        n -= 1
    return np.asarray(row[:n], dtype=np.int64).tobytes(), n


def record_row(store: Captured, row: Sequence[int], logprobs: torch.Tensor) -> None:
    """Store one harness input row's input-token log-probs (`logprobs`[t] = log p(row[t+1] | row[..t]), float32,
    at least as many as the row without its right padding has tokens, less one), keyed by the row."""
    key, n = _row_key(row)
    store[key] = logprobs[: n - 1].float().cpu()  # [n-1]


def capture_input_logprobs(lm: Any) -> Captured:
    """Make the HFLM `lm` record, at every causal forward, each input row's per-token log-probabilities
    (entry t = log p(input[t+1] | input[..t]), float32 on the CPU), keyed by the row without its right padding.
    Returns the store, filled as the harness runs; the logits the harness gets are unchanged. A
    `SharedContextLM` records the rows it scores from shared contexts in the same store."""
    store: Captured = {}
    call = lm._model_call

    def recording_call(inps: torch.Tensor, attn_mask: torch.Tensor | None = None, labels: torch.Tensor | None = None):
        logits = call(inps, attn_mask=attn_mask, labels=labels)  # [b, T, V]
        if attn_mask is None and labels is None:  # the causal path; seq2seq passes both
            for row_ids, row_logits in zip(inps.tolist(), logits):  # one row at a time: [T, V] in float32
                _, n = _row_key(row_ids)
                targets = torch.tensor(row_ids[1:n], dtype=torch.long, device=row_logits.device)  # [n-1]
                logp = torch.log_softmax(row_logits[: n - 1].float(), dim=-1)  # [n-1, V]
                record_row(store, row_ids, logp.gather(1, targets[:, None]).squeeze(1))
        return logits

    lm._model_call = recording_call
    if hasattr(type(lm), "record_input"):  # shared_context.SharedContextLM: its rows go into the same store
        lm.record_input = functools.partial(record_row, store)
    return store


def choice_ppl_scores(
    model: torch.nn.Module,
    encode: EncodePair,
    samples: Sequence[dict[str, Any]],
    *,
    batch_size: int = 8,
    max_length: int | None = None,
    captured: Captured | None = None,
) -> list[list[float]]:
    """Per example, per choice: OpenCompass's PPL score, NLL(context + choice) / tokens(context + choice).

    `samples` are lm-eval logged multiple-choice samples (`arguments` = [(context, continuation), ...] and `resps`);
    `encode` must be the tokenization the harness scored them with (`harness_encoder`). The context NLL comes from
    `captured` (`capture_input_logprobs` on the HFLM that scored them) where it holds the request's input row, else
    from a forward of `model`. A prompt longer than `max_length` + 1 tokens was left-truncated by the harness, so
    its decomposition would be wrong: an error.
    """
    captured = captured or {}
    pairs: list[list[tuple[tuple[int, ...], int]]] = []  # per example, per choice: (context tokens, total tokens)
    context_nll: dict[tuple[int, ...], float] = {}
    for sample in samples:
        row = []
        for context, continuation in sample["arguments"]:
            context_enc, continuation_enc = encode(context, continuation)
            total = len(context_enc) + len(continuation_enc)
            if max_length is not None and total > max_length + 1:
                raise ValueError(
                    f"example doc_id={sample['doc_id']}: context + choice has {total} tokens, more than the "
                    f"model's {max_length} + 1, so the harness truncated it; its PPL score is undefined"
                )
            ctx = tuple(context_enc)
            logprobs = captured.get(_row_key((list(context_enc) + list(continuation_enc))[:-1])[0])
            if ctx not in context_nll and logprobs is not None and len(logprobs) >= len(ctx) - 1:
                context_nll[ctx] = -float(logprobs[: len(ctx) - 1].double().sum())
            row.append((ctx, total))
        pairs.append(row)
    missing = list(dict.fromkeys(ctx for row in pairs for ctx, _ in row if ctx not in context_nll))
    context_nll.update(zip(missing, sequence_nll(model, missing, batch_size)))
    return [
        [(context_nll[ctx] - continuation_loglik(sample, j)) / total for j, (ctx, total) in enumerate(row)]
        for sample, row in zip(samples, pairs)
    ]


def ppl_correct(task: Any, sample: dict[str, Any], ppl: Sequence[float]) -> bool | None:
    """Is the choice with the lowest PPL score (the first on ties) the gold one? The harness's own gold rule
    decides (multiple-input tasks such as winogrande, gold lists): its `process_results` gets -ppl as the choices'
    log-likelihoods, so its `acc` is the paper's decision rule. None when the task reports no `acc`."""
    metrics = task.process_results(sample["doc"], [(-float(p), False) for p in ppl])
    return float(metrics["acc"]) == 1.0 if "acc" in metrics else None


def mean_metric(values: Sequence[float]) -> dict[str, float | None]:
    """{'value': mean, 'stderr': sample std / sqrt(n)}, the harness's `mean_stderr` (None for one example)."""
    n = len(values)
    mean = sum(values) / n
    stderr = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n) if n > 1 else None
    return {"value": mean, "stderr": stderr}


def task_ppl_records(
    model: torch.nn.Module,
    lm: Any,
    task: Any,
    samples: Sequence[dict[str, Any]],
    *,
    batch_size: int = 8,
    captured: Captured | None = None,
) -> tuple[list[dict[str, Any]], dict[str, dict[str, float | None]]]:
    """Stability records of one multiple-choice task's logged samples, with PPL scores and gold choices, and the
    task metrics they give: `acc_ppl` (absent when the task reports no `acc`) and `gold_logprob`
    (choice_metrics.py). `lm` is the harness's HFLM over `model` (with `captured` from
    `capture_input_logprobs(lm)` when it scored the samples), `task` its task object."""
    ppl = choice_ppl_scores(
        model, harness_encoder(lm), samples, batch_size=batch_size, max_length=lm.max_length, captured=captured
    )
    correct = [ppl_correct(task, sample, scores) for sample, scores in zip(samples, ppl)]
    golds = [gold_choices(task, s["doc"], len(p)) for s, p in zip(samples, ppl)]
    records = [example_record(s, p, c, g) for s, p, c, g in zip(samples, ppl, correct, golds)]
    metrics = {}
    if all(c is not None for c in correct):
        metrics["acc_ppl"] = mean_metric([1.0 if c else 0.0 for c in correct])
    if all(golds):
        metrics["gold_logprob"] = mean_metric([record_gold_logprob(r) for r in records])
    return records, metrics


def harness_lm(model: torch.nn.Module, tokenizer: Any, batch_size: int, scorer: str = "shared") -> Any:
    """An HFLM like `evaluate.evaluate_tasks` builds: same model, tokenizer and settings, so the same token split.
    `scorer` (schema `evaluation.scorer`): `shared` = a `shared_context.SharedContextLM` (each shared context
    computed once), `harness` = the harness's own HFLM."""
    from lm_eval.models.huggingface import HFLM

    from streamline.evaluation.shared_context import SCORERS, SharedContextLM

    if scorer not in SCORERS:
        raise ValueError(f"evaluation.scorer {scorer!r} is not one of {', '.join(SCORERS)}")
    cls = SharedContextLM if scorer == "shared" else HFLM
    return cls(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)


def load_task(manager: Any, name: str) -> Any:
    """The harness's task object `name` (for its gold rule) from a TaskManager."""
    return manager.load([name])["tasks"][name]
