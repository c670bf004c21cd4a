"""Stability: confidence-weighted agreement between the dense and the compressed model's correctness.

The paper's definition, as its code computes it (RUCKBReasoning/LLM-Streamline `calculate_stability.py`,
commit adf50ba): per example i of a multiple-choice task,
  scores   = each choice's PPL score as OpenCompass's PPL mode computes it: the mean cross-entropy per token of the
             whole prompt, context + choice (`opencompass/models/huggingface.py` `HuggingFace._get_ppl`, lines
             494-533 at commit a5acc4bb: sum of the shifted token losses, padding ignored, divided by the prompt's
             non-padding token count; see `streamline.evaluation.choice_nll`). The official code reads them as the `PPL`
             field OpenCompass writes per label (`icl_ppl_inferencer.py` line 165, `save_prompt_and_ppl`);
  c_i      = population standard deviation of the DENSE model's scores (`np.std`, calculate_stability.py line 14);
  w        = softmax(c) over the examples (lines 30-31), here computed with the max subtracted;
  a_i      = 1 when both models are right or both are wrong (lines 19-23), right = the choice with the lowest PPL
             score is the gold one (OpenCompass's prediction, `acc_ppl`; `correctness="acc"` uses the harness's
             own `acc`, the highest summed log-likelihood, instead);
  stability = sum_i w_i a_i, the weight of the AGREEING examples.
The official code sums the first m weights, m = the number of agreeing examples (`get_prediction_matches`,
line 25: `sum(weights[i] for i in range(matches))`), not the weights of the examples that agree; that prefix-sum
bug is not reproduced.

Also reported: `stability_ess` = 1 / sum_i w_i^2, the effective number of examples behind the weighted mean
(n when the weights are uniform, 1 when one example holds all the weight); `prediction_agreement` = share of
examples where both models pick the same choice under the same decision rule; `correctness_agreement` = mean a_i;
`choice_kl` = the mean KL divergence from the dense model's choice distribution softmax(-ppl) to the compressed
model's (evaluation/choice_metrics.py).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from streamline.evaluation.choice_metrics import choice_kl

CORRECTNESS = ("acc_ppl", "acc")  # decision rules for right/wrong; the first is the default (the paper)


class AlignmentError(ValueError):
    """Dense and compressed logs do not cover the same examples."""


def _argmax(values: Sequence[float]) -> int:
    return max(range(len(values)), key=values.__getitem__)


def _argmin(values: Sequence[float]) -> int:
    return min(range(len(values)), key=values.__getitem__)


def example_record(
    sample: dict[str, Any],
    ppl: Sequence[float] | None = None,
    correct_ppl: bool | None = None,
    gold: Sequence[int] | None = None,
) -> dict[str, Any]:
    """The fields stability needs from one lm-eval logged sample, plus its per-choice PPL scores when given
    (`streamline.evaluation.choice_nll.choice_ppl_scores`), whether their lowest is the gold choice, and the gold
    choices (`choice_metrics.gold_choices`, for gold_logprob)."""
    scores = [float(resp[0]) for resp in sample["filtered_resps"]]
    record: dict[str, Any] = {
        "doc_id": int(sample["doc_id"]),
        "doc_hash": sample.get("doc_hash"),
        "scores": scores,
        "pred": _argmax(scores),
        "correct": float(sample["acc"]) == 1.0,
    }
    if ppl is not None:
        record["ppl"] = [float(p) for p in ppl]
        record["pred_ppl"] = _argmin(record["ppl"])
        record["correct_ppl"] = correct_ppl
    if gold is not None:
        record["gold"] = [int(j) for j in gold]
    return record


def _std(values: Sequence[float]) -> float:
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))


def stable_softmax(values: Sequence[float]) -> list[float]:
    top = max(values)
    exps = [math.exp(v - top) for v in values]
    total = sum(exps)
    return [e / total for e in exps]


def effective_sample_size(weights: Sequence[float]) -> float:
    """1 / sum w^2 of normalised weights (Kish): n for uniform weights, 1 for a single example."""
    return 1.0 / sum(w * w for w in weights)


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


def _decision(record: dict[str, Any], correctness: str) -> tuple[int, bool]:
    """(predicted choice, right?) of one record under the decision rule `correctness`."""
    if correctness == "acc":
        return record["pred"], record["correct"]
    if record.get("ppl") is None or record.get("correct_ppl") is None:
        raise AlignmentError(
            f"example doc_id={record['doc_id']} has no PPL scores ('ppl', 'correct_ppl') for "
            "stability_correctness acc_ppl; re-run the accuracy step, or use stability_correctness: acc"
        )
    return record["pred_ppl"], record["correct_ppl"]


def stability(
    dense: list[dict[str, Any]], compressed: list[dict[str, Any]], correctness: str = CORRECTNESS[0]
) -> dict[str, Any]:
    """Stability, its effective sample size, prediction agreement, the number of examples compared and, where
    both logs have PPL scores, `choice_kl` (records from `example_record`). `correctness`: `acc_ppl` (lowest PPL score, the paper) or
    `acc` (the harness's highest log-likelihood) decides right/wrong and the predictions compared."""
    if correctness not in CORRECTNESS:
        raise ValueError(f"stability_correctness {correctness!r} is unknown; allowed: {', '.join(CORRECTNESS)}")
    pairs = align(dense, compressed)
    if not pairs:
        raise AlignmentError("no examples to compare")
    for d, _ in pairs:
        if d.get("ppl") is None:
            raise AlignmentError(
                f"example doc_id={d['doc_id']} of the dense log has no PPL scores ('ppl'); re-run its accuracy step"
            )
    weights = stable_softmax([_std(d["ppl"]) for d, _ in pairs])
    decisions = [(_decision(d, correctness), _decision(c, correctness)) for d, c in pairs]
    agree = [1.0 if dd[1] == cd[1] else 0.0 for dd, cd in decisions]
    result = {
        "stability": sum(w * a for w, a in zip(weights, agree)),
        "stability_ess": effective_sample_size(weights),
        "prediction_agreement": sum(dd[0] == cd[0] for dd, cd in decisions) / len(pairs),
        "correctness_agreement": sum(agree) / len(pairs),
        "n_examples": len(pairs),
        "correctness": correctness,
    }
    if all(c.get("ppl") is not None for _, c in pairs):
        result["choice_kl"] = sum(choice_kl(d["ppl"], c["ppl"]) for d, c in pairs) / len(pairs)
    return result
