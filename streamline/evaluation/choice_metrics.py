"""Continuous per-example scores of multiple-choice tasks, from the per-choice PPL scores (issue 22, item 2).

0/1 accuracy at a few hundred examples cannot resolve a two-point difference between two variants; a continuous
score per example can. Both scores below read the choices on the scale `acc_ppl` decides on: each choice's PPL
score s_j (OpenCompass's mean cross-entropy per token of context + choice, `choice_nll`), turned into a
distribution over the choices by p = softmax(-s).

- `gold_logprob` = log sum_{j in gold} p_j: how much of that distribution the gold choice(s) get (0 at best);
- `choice_kl` = KL(p_dense || p_variant) = sum_j p_dense,j (log p_dense,j - log p_variant,j): how far the
  variant's choice distribution moved from the dense model's (0 for the dense model itself).

The gold choices are the harness's own (`gold_choices`): its `process_results` is asked which one-hot prediction
it counts as right, so multiple-input tasks (winogrande) and gold lists are handled as the harness handles them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


def choice_logprobs(ppl: Sequence[float]) -> list[float]:
    """log softmax(-ppl) over the choices (max subtracted, so no overflow)."""
    logits = [-float(s) for s in ppl]
    top = max(logits)
    norm = top + math.log(sum(math.exp(v - top) for v in logits))
    return [v - norm for v in logits]


def gold_logprob(ppl: Sequence[float], gold: Sequence[int]) -> float:
    """log of the probability softmax(-ppl) gives the gold choice(s)."""
    logp = choice_logprobs(ppl)
    top = max(logp[j] for j in gold)
    return top + math.log(sum(math.exp(logp[j] - top) for j in gold))


def choice_kl(dense_ppl: Sequence[float], ppl: Sequence[float]) -> float:
    """KL(p_dense || p) of the two choice distributions softmax(-ppl)."""
    logp_dense, logp = choice_logprobs(dense_ppl), choice_logprobs(ppl)
    return sum(math.exp(d) * (d - v) for d, v in zip(logp_dense, logp))


def gold_choices(task: Any, doc: dict[str, Any], num_choices: int) -> list[int]:
    """The choices the harness's gold rule counts as right: for each j, is a prediction of exactly j `acc` 1?
    Empty when the task reports no `acc`."""
    gold = []
    for j in range(num_choices):
        one_hot = [(0.0 if k == j else -1.0, False) for k in range(num_choices)]
        metrics = task.process_results(doc, one_hot)
        if "acc" not in metrics:
            return []
        if float(metrics["acc"]) == 1.0:
            gold.append(j)
    return gold


def record_gold_logprob(record: dict[str, Any]) -> float | None:
    """gold_logprob of one example record (stability.example_record with `ppl` and `gold`), None without them."""
    if record.get("ppl") is None or not record.get("gold"):
        return None
    return gold_logprob(record["ppl"], record["gold"])
