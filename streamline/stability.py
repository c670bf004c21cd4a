"""Stability: confidence-weighted agreement between the dense and the compressed model's correctness.

Per example i of a multiple-choice task (scores = the harness's per-choice log-likelihoods, unnormalised,
as logged in `filtered_resps`):
  c_i = population standard deviation of the dense model's per-choice scores (its confidence);
  w_i = softmax(c)_i, computed with the max subtracted so no confidence overflows;
  a_i = 1 when both models are right or both are wrong (right = the harness's per-example `acc`);
  stability = sum_i w_i a_i  (the weight of the AGREEING examples).
prediction_agreement = share of examples where both models pick the same option (argmax of the scores).
"""

from __future__ import annotations

import math
from typing import Any


class AlignmentError(ValueError):
    """Dense and compressed logs do not cover the same examples."""


def example_record(sample: dict[str, Any]) -> dict[str, Any]:
    """The fields stability needs from one lm-eval logged sample."""
    scores = [float(resp[0]) for resp in sample["filtered_resps"]]
    return {
        "doc_id": int(sample["doc_id"]),
        "doc_hash": sample.get("doc_hash"),
        "scores": scores,
        "pred": max(range(len(scores)), key=scores.__getitem__),
        "correct": float(sample["acc"]) == 1.0,
    }


def _std(values: list[float]) -> float:
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))


def stable_softmax(values: list[float]) -> list[float]:
    top = max(values)
    exps = [math.exp(v - top) for v in values]
    total = sum(exps)
    return [e / total for e in exps]


def align(dense: list[dict[str, Any]], compressed: list[dict[str, Any]]) -> list[tuple[dict, dict]]:
    """Pair records by doc_id; any missing, extra or different example is an error."""
    by_id = {r["doc_id"]: r for r in compressed}
    if len(by_id) != len(compressed) or len({r["doc_id"] for r in dense}) != len(dense):
        raise AlignmentError("duplicate doc_id in the per-example logs")
    dense_ids = {r["doc_id"] for r in dense}
    if dense_ids != set(by_id):
        missing = sorted(dense_ids - set(by_id))[:5]
        extra = sorted(set(by_id) - dense_ids)[:5]
        raise AlignmentError(f"examples differ: missing in compressed {missing}, only in compressed {extra}")
    pairs = []
    for d in sorted(dense, key=lambda r: r["doc_id"]):
        c = by_id[d["doc_id"]]
        if d.get("doc_hash") != c.get("doc_hash") or len(d["scores"]) != len(c["scores"]):
            raise AlignmentError(f"example doc_id={d['doc_id']} differs between the two logs")
        pairs.append((d, c))
    return pairs


def stability(dense: list[dict[str, Any]], compressed: list[dict[str, Any]]) -> dict[str, Any]:
    """Stability, prediction agreement and the number of examples compared (records from `example_record`)."""
    pairs = align(dense, compressed)
    if not pairs:
        raise AlignmentError("no examples to compare")
    weights = stable_softmax([_std(d["scores"]) for d, _ in pairs])
    agree = [1.0 if d["correct"] == c["correct"] else 0.0 for d, c in pairs]
    return {
        "stability": sum(w * a for w, a in zip(weights, agree)),
        "prediction_agreement": sum(d["pred"] == c["pred"] for d, c in pairs) / len(pairs),
        "correctness_agreement": sum(agree) / len(pairs),
        "n_examples": len(pairs),
    }
