import math

import pytest

from streamline.stability import AlignmentError, example_record, stability


def rec(doc_id, scores, correct, pred=None):
    return {
        "doc_id": doc_id,
        "doc_hash": f"h{doc_id}",
        "scores": scores,
        "pred": pred if pred is not None else max(range(len(scores)), key=scores.__getitem__),
        "correct": correct,
    }


# Hand-worked 5-example case. Dense per-choice scores and their population std (confidence):
#   ex0 [-1, -3]      std 1.0      ex1 [-2, -2]    std 0.0      ex2 [0, -4]   std 2.0
#   ex3 [-1, -2, -3]  std sqrt(2/3)                ex4 [-5, -6] std 0.5
DENSE = [
    rec(0, [-1.0, -3.0], True),
    rec(1, [-2.0, -2.0], False),
    rec(2, [0.0, -4.0], True),
    rec(3, [-1.0, -2.0, -3.0], True),
    rec(4, [-5.0, -6.0], False),
]
# Compressed: agrees on correctness for ex0, ex1, ex4; picks the same option on ex0, ex1, ex3, ex4.
COMPRESSED = [
    rec(0, [-1.5, -2.5], True),
    rec(1, [-3.0, -2.5], False, pred=0),
    rec(2, [-3.0, -1.0], False),
    rec(3, [-1.0, -4.0, -2.0], False),
    rec(4, [-5.0, -5.5], False),
]


def test_hand_worked_case():
    conf = [1.0, 0.0, 2.0, math.sqrt(2 / 3), 0.5]
    z = sum(math.exp(c) for c in conf)
    expected = (math.exp(1.0) + math.exp(0.0) + math.exp(0.5)) / z
    out = stability(DENSE, COMPRESSED)
    assert out["stability"] == pytest.approx(expected, abs=1e-12)
    # (e^1 + e^0 + e^0.5) / (e^1 + e^0 + e^2 + e^0.8165 + e^0.5) = 5.3670 / 15.0187
    assert out["stability"] == pytest.approx(0.357356, abs=1e-5)
    assert out["prediction_agreement"] == pytest.approx(4 / 5)
    assert out["correctness_agreement"] == pytest.approx(3 / 5)
    assert out["n_examples"] == 5


def test_self_comparison_is_one():
    out = stability(DENSE, DENSE)
    assert out["stability"] == pytest.approx(1.0) and out["prediction_agreement"] == 1.0


def test_extreme_confidences_do_not_overflow():
    dense = [rec(0, [0.0, -4000.0], True), rec(1, [0.0, -1.0], True), rec(2, [0.0, -3000.0], True)]
    compressed = [rec(0, [0.0, -1.0], True), rec(1, [0.0, -1.0], False), rec(2, [0.0, -1.0], False)]
    out = stability(dense, compressed)
    assert math.isfinite(out["stability"])
    # std 2000 dominates std 1500 and 0.5 completely: all the weight sits on the agreeing ex0.
    assert out["stability"] == pytest.approx(1.0)


def test_missing_example_is_an_error():
    with pytest.raises(AlignmentError, match=r"missing in compressed \[4\]"):
        stability(DENSE, COMPRESSED[:4])


def test_different_example_is_an_error():
    changed = [dict(r) for r in COMPRESSED]
    changed[2]["doc_hash"] = "other"
    with pytest.raises(AlignmentError, match="doc_id=2 differs"):
        stability(DENSE, changed)


def test_example_record_from_lm_eval_sample():
    sample = {"doc_id": 7, "doc_hash": "x", "filtered_resps": [(-2.0, False), (-1.0, True)], "acc": 0.0}
    assert example_record(sample) == {"doc_id": 7, "doc_hash": "x", "scores": [-2.0, -1.0], "pred": 1, "correct": False}
