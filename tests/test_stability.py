import json
import math

import pytest
import torch
import torch.nn.functional as F
import yaml
from conftest import MIRROR, REPO

from streamline.evaluation.choice_metrics import choice_kl, gold_choices, gold_logprob, record_gold_logprob
from streamline.evaluation.choice_nll import (
    capture_input_logprobs,
    choice_ppl_scores,
    harness_encoder,
    harness_lm,
    load_task,
    mean_metric,
    ppl_correct,
    task_ppl_records,
)
from streamline.evaluation.stability import AlignmentError, effective_sample_size, example_record, stability
from streamline.workflow.config_schema import defaults
from streamline.workflow.record_steps import stability_step


def rec(doc_id, scores, correct, ppl, correct_ppl, pred=None):
    """A stability record: harness log-likelihoods + correctness, PPL scores (per-token NLL) + correctness."""
    return {
        "doc_id": doc_id,
        "doc_hash": f"h{doc_id}",
        "scores": scores,
        "pred": pred if pred is not None else max(range(len(scores)), key=scores.__getitem__),
        "correct": correct,
        "ppl": ppl,
        "pred_ppl": min(range(len(ppl)), key=ppl.__getitem__),
        "correct_ppl": correct_ppl,
    }


# Hand-worked 5-example case on the per-token scale. Dense PPL scores (mean NLL per token of context + choice)
# and their population std (the confidence c_i):
#   ex0 [2.0, 3.0]       std 0.5      ex1 [2.5, 2.5]  std 0.0      ex2 [1.0, 3.0]  std 1.0
#   ex3 [2.0, 2.5, 3.0]  std sqrt(1/6)                ex4 [3.0, 3.2] std 0.1
DENSE = [
    rec(0, [-20.0, -31.0], True, [2.0, 3.0], True),
    rec(1, [-25.0, -24.0], False, [2.5, 2.5], True),
    rec(2, [-9.0, -35.0], True, [1.0, 3.0], True),
    rec(3, [-18.0, -26.0, -33.0], True, [2.0, 2.5, 3.0], True),
    rec(4, [-33.0, -31.0], False, [3.0, 3.2], False),
]
# Compressed. acc_ppl: agrees on correctness for ex0, ex1, ex4; picks the same (lowest-PPL) choice on ex0, ex1,
# ex4. Harness acc: agrees on ex0, ex2, ex4; picks the same (highest log-likelihood) choice on ex0, ex2, ex3, ex4.
COMPRESSED = [
    rec(0, [-20.0, -30.0], True, [2.2, 2.9], True),
    rec(1, [-24.0, -26.0], True, [2.6, 2.8], True),
    rec(2, [-10.0, -30.0], True, [3.1, 3.0], False),
    rec(3, [-19.0, -26.0, -25.0], False, [2.9, 2.4, 3.0], False),
    rec(4, [-32.0, -30.0], False, [3.1, 3.4], False),
]
CONF = [0.5, 0.0, 1.0, math.sqrt(1 / 6), 0.1]


def test_hand_worked_case_on_the_per_token_scale():
    z = sum(math.exp(c) for c in CONF)
    weights = [math.exp(c) / z for c in CONF]
    out = stability(DENSE, COMPRESSED)
    assert out["correctness"] == "acc_ppl"
    assert out["stability"] == pytest.approx(weights[0] + weights[1] + weights[4], abs=1e-12)
    # (e^0.5 + e^0 + e^0.1) / (e^0.5 + e^0 + e^1 + e^0.40825 + e^0.1) = 3.75389 / 7.97635
    assert out["stability"] == pytest.approx(0.470628, abs=1e-5)
    assert out["stability_ess"] == pytest.approx(1 / sum(w * w for w in weights), abs=1e-12)
    assert out["stability_ess"] == pytest.approx(4.36029, abs=1e-4)
    assert out["prediction_agreement"] == pytest.approx(3 / 5)
    assert out["correctness_agreement"] == pytest.approx(3 / 5)
    assert out["n_examples"] == 5


def test_harness_acc_option_uses_the_harness_correctness_with_the_same_weights():
    z = sum(math.exp(c) for c in CONF)
    out = stability(DENSE, COMPRESSED, "acc")
    assert out["stability"] == pytest.approx((math.exp(0.5) + math.exp(1.0) + math.exp(0.1)) / z, abs=1e-12)
    assert out["prediction_agreement"] == pytest.approx(4 / 5)
    assert out["stability_ess"] == pytest.approx(stability(DENSE, COMPRESSED)["stability_ess"])


def test_unknown_correctness_is_named():
    with pytest.raises(ValueError, match=r"stability_correctness 'acc_norm' is unknown; allowed: acc_ppl, acc"):
        stability(DENSE, COMPRESSED, "acc_norm")


def test_records_without_ppl_scores_are_an_error_only_where_needed():
    old = [{k: v for k, v in r.items() if k not in ("ppl", "pred_ppl", "correct_ppl")} for r in COMPRESSED]
    with pytest.raises(AlignmentError, match=r"doc_id=0 has no PPL scores"):
        stability(DENSE, old)
    assert stability(DENSE, old, "acc")["stability"] == pytest.approx(stability(DENSE, COMPRESSED, "acc")["stability"])


def test_old_formula_collapses_to_an_argmax_and_the_new_one_does_not():
    # Four examples of ~10-token prompts; summed log-likelihoods are ~10x the per-token NLL, so their std is too.
    # Dense agrees with the compressed model on ex0 only.
    sums = [[-20.0, -60.0], [-25.0, -45.0], [-30.0, -42.0], [-22.0, -30.0]]  # std 20, 10, 6, 4
    ppl = [[2.0, 2.8], [2.5, 3.1], [3.0, 3.4], [2.2, 2.5]]  # std 0.4, 0.3, 0.2, 0.15
    dense = [rec(i, s, True, p, True) for i, (s, p) in enumerate(zip(sums, ppl))]
    compressed = [rec(i, s, i == 0, p, i == 0) for i, (s, p) in enumerate(zip(sums, ppl))]
    # Old: softmax(20, 10, 6, 4) puts 1 / (1 + e^-10 + e^-14 + e^-16) of the weight on ex0.
    old_weights = [math.exp(c - 20) for c in (20, 10, 6, 4)]
    old = old_weights[0] / sum(old_weights)
    assert old == pytest.approx(1.0, abs=1e-4)
    assert 1 / sum((w / sum(old_weights)) ** 2 for w in old_weights) == pytest.approx(1.0, abs=1e-3)
    # New: softmax(0.4, 0.3, 0.2, 0.15) spreads the weight: ex0 holds e^0.4 / (e^0.4 + e^0.3 + e^0.2 + e^0.15).
    new_weights = [math.exp(c) for c in (0.4, 0.3, 0.2, 0.15)]
    out = stability(dense, compressed)
    assert out["stability"] == pytest.approx(new_weights[0] / sum(new_weights), abs=1e-12)
    assert out["stability"] == pytest.approx(0.28552, abs=1e-5)
    assert out["stability_ess"] == pytest.approx(1 / sum((w / sum(new_weights)) ** 2 for w in new_weights))
    assert 3.9 < out["stability_ess"] < 4.0


def test_effective_sample_size_by_hand():
    assert effective_sample_size([0.25] * 4) == pytest.approx(4.0)
    assert effective_sample_size([1.0, 0.0, 0.0]) == pytest.approx(1.0)
    # 1 / (0.5^2 + 0.25^2 + 0.25^2) = 1 / 0.375
    assert effective_sample_size([0.5, 0.25, 0.25]) == pytest.approx(8 / 3)


def test_self_comparison_is_one():
    out = stability(DENSE, DENSE)
    assert out["stability"] == pytest.approx(1.0) and out["prediction_agreement"] == 1.0


def test_extreme_confidences_do_not_overflow():
    dense = [rec(i, [0.0, -1.0], True, p, True) for i, p in enumerate([[0.0, 4000.0], [0.0, 1.0], [0.0, 3000.0]])]
    compressed = [rec(i, [0.0, -1.0], True, [0.0, 1.0], i == 0) for i in range(3)]
    out = stability(dense, compressed)
    assert math.isfinite(out["stability"])
    # std 2000 dominates std 1500 and 0.5 completely: all the weight sits on the agreeing ex0.
    assert out["stability"] == pytest.approx(1.0) and out["stability_ess"] == pytest.approx(1.0)


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
    # acc_ppl's prediction is the LOWEST per-token NLL (here choice 0, although choice 1 has the higher sum)
    with_ppl = example_record(sample, [1.5, 2.0], True)
    assert with_ppl["pred_ppl"] == 0 and with_ppl["correct_ppl"] is True and with_ppl["pred"] == 1


def test_stability_step_passes_the_correctness_option(tmp_path):
    for name, records in (("dense", DENSE), ("variant", COMPRESSED)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "piqa_mirror.choices.json").write_text(json.dumps(records))
    for correctness in ("acc_ppl", "acc"):
        out = stability_step(dense_samples=tmp_path / "dense", variant_samples=tmp_path / "variant",
                             out_path=tmp_path / f"{correctness}.json", correctness=correctness)
        expected = stability(DENSE, COMPRESSED, correctness)["stability"]
        assert out["piqa_mirror"]["stability"] == pytest.approx(expected)
        assert json.loads((tmp_path / f"{correctness}.json").read_text())["piqa_mirror"]["correctness"] == correctness
    schema_default = defaults("evaluation")["stability_correctness"]
    default = stability_step(dense_samples=tmp_path / "dense", variant_samples=tmp_path / "variant",
                             out_path=tmp_path / "default.json", correctness=schema_default)
    assert default["piqa_mirror"]["correctness"] == "acc_ppl"


def test_schema_default_and_allowed_values():
    schema = yaml.safe_load((REPO / "schemas" / "config.schema.yaml").read_text())
    key = schema["properties"]["evaluation"]["properties"]["stability_correctness"]
    assert key["default"] == "acc_ppl" and key["enum"] == ["acc_ppl", "acc"]
    rule = (REPO / "rules" / "evaluate.smk").read_text()
    assert 'correctness=eval_settings("stability")["correctness"]' in rule
    common = (REPO / "streamline/workflow/variants.py").read_text()  # eval_settings: the stability job's settings
    assert '{"correctness": config["evaluation"]["stability_correctness"]' in common


# ---- PPL scores: the decomposition NLL(context) - loglik(continuation) against a direct forward ----------------

REQUESTS = [  # (context, continuation): shared contexts, winogrande-like contexts, a trailing space, an empty one
    ("The quick brown fox", " jumps over the lazy dog."),
    ("The quick brown fox", " saves nine."),
    ("A stitch in time saves", " nine."),
    ("A stitch in time", " the lazy dog."),
    ("Language models predict the next token ", "from the previous ones."),
    ("", "The quick brown fox."),
]


def harness_samples(lm, requests, choices_per_example=2):
    """Logged-sample-like records whose `resps` come from the harness's own loglikelihood on these requests."""
    from lm_eval.api.instance import Instance

    instances = [Instance("loglikelihood", {}, args, idx) for idx, args in enumerate(requests)]
    resps = lm.loglikelihood(instances, disable_tqdm=True)
    samples = []
    for start in range(0, len(requests), choices_per_example):
        chunk = range(start, start + choices_per_example)
        samples.append(
            {"doc_id": start, "arguments": [requests[i] for i in chunk], "resps": [[resps[i]] for i in chunk]}
        )
    return samples


def direct_ppl(model, tokenizer, context, continuation):
    """Mean NLL per token of one full forward of context + continuation (OpenCompass: sum over the predicted
    tokens / all tokens of the prompt); an empty context is the harness's prefix token, the EOS."""
    whole = (
        tokenizer.encode(context + continuation)
        if context
        else [tokenizer.eos_token_id] + tokenizer.encode(continuation)
    )
    ids = torch.tensor([whole])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, :-1]
    return float(F.cross_entropy(logits, ids[0, 1:], reduction="sum")) / len(whole)


@pytest.mark.parametrize("batch_size", [1, 3])
def test_decomposition_with_a_context_forward_equals_a_direct_forward(tiny_model, tokenizer, batch_size):
    lm = harness_lm(tiny_model, tokenizer, batch_size=1)
    samples = harness_samples(lm, REQUESTS)
    scores = choice_ppl_scores(tiny_model, harness_encoder(lm), samples, batch_size=batch_size)
    expected = [[direct_ppl(tiny_model, tokenizer, c, k) for c, k in s["arguments"]] for s in samples]
    assert len(scores) == 3 and all(len(row) == 2 for row in scores)
    for got, want in zip(scores, expected):
        assert got == pytest.approx(want, rel=1e-5, abs=1e-5)
    assert all(p > 0 for row in scores for p in row)


@pytest.mark.parametrize("harness_batch", [1, 4])
def test_decomposition_from_the_harness_forward_needs_no_extra_pass(tiny_model, tokenizer, monkeypatch, harness_batch):
    from streamline.evaluation import choice_nll

    lm = harness_lm(tiny_model, tokenizer, batch_size=harness_batch)  # batch 4: right-padded rows of mixed length
    captured = capture_input_logprobs(lm)
    samples = harness_samples(lm, REQUESTS)
    assert captured  # the harness's forwards were recorded

    def no_forward(model, sequences, batch_size=8):
        assert all(len(s) <= 1 for s in sequences), "a context the capture should have covered was re-run"
        return [0.0] * len(sequences)

    monkeypatch.setattr(choice_nll, "sequence_nll", no_forward)
    scores = choice_ppl_scores(tiny_model, harness_encoder(lm), samples, captured=captured)
    expected = [[direct_ppl(tiny_model, tokenizer, c, k) for c, k in s["arguments"]] for s in samples]
    for got, want in zip(scores, expected):
        assert got == pytest.approx(want, rel=1e-5, abs=1e-5)


def test_prompt_longer_than_the_model_is_an_error(tiny_model, tokenizer):
    lm = harness_lm(tiny_model, tokenizer, batch_size=1)
    samples = harness_samples(lm, REQUESTS[:2])
    with pytest.raises(ValueError, match=r"doc_id=0: context \+ choice has \d+ tokens, more than the model's 3"):
        choice_ppl_scores(tiny_model, harness_encoder(lm), samples, max_length=3)


def test_mean_metric_by_hand():
    # values 1, 0, 1, 1: mean 0.75, sample std sqrt((3 * 0.25^2 + 0.75^2) / 3) = 0.5, stderr 0.5 / sqrt(4)
    assert mean_metric([1.0, 0.0, 1.0, 1.0]) == pytest.approx({"value": 0.75, "stderr": 0.5 / 2})
    assert mean_metric([1.0]) == {"value": 1.0, "stderr": None}


@pytest.mark.skipif(not (MIRROR / "piqa").is_dir(), reason="needs the data mirror")
def test_acc_ppl_uses_the_harness_gold_rule_with_the_lowest_ppl(tiny_model, tokenizer):
    from streamline.evaluation.harness import task_manager

    manager = task_manager([], MIRROR)
    piqa, wino = load_task(manager, "piqa_mirror"), load_task(manager, "winogrande_mirror")
    piqa_doc = next(d for d in piqa.test_docs() if d["label"] == 1)
    # gold = choice 1: lowest PPL on choice 1 is right, on choice 0 wrong (whatever the summed log-likelihoods say)
    assert ppl_correct(piqa, {"doc": piqa_doc}, [2.0, 1.5]) is True
    assert ppl_correct(piqa, {"doc": piqa_doc}, [1.5, 2.0]) is False
    # winogrande scores the options as contexts (multiple input); the harness's gold is doc_to_text
    wino_doc = next(iter(wino.test_docs()))
    gold = wino.doc_to_text(wino_doc)
    ppl = [1.0, 1.0]
    ppl[1 - gold] = 3.0  # the gold option has the lower score
    assert ppl_correct(wino, {"doc": wino_doc}, ppl) is True
    assert ppl_correct(wino, {"doc": wino_doc}, ppl[::-1]) is False

    # task_ppl_records on harness-scored piqa requests: records carry the scores, acc_ppl is their mean correctness
    lm = harness_lm(tiny_model, tokenizer, batch_size=2)
    docs = [d for _, d in zip(range(3), piqa.test_docs())]
    requests = [(piqa.doc_to_text(d), " " + c) for d in docs for c in piqa.doc_to_choice(d)]
    samples = harness_samples(lm, requests)
    for sample, doc in zip(samples, docs):
        sample.update(doc=doc, doc_hash="h", filtered_resps=[r[0] for r in sample["resps"]], acc=0.0)
    records, metrics = task_ppl_records(tiny_model, lm, piqa, samples, batch_size=2)
    acc_ppl = metrics["acc_ppl"]
    for record, doc in zip(records, docs):
        assert record["correct_ppl"] == (record["pred_ppl"] == doc["label"])
        assert record["gold"] == [doc["label"]]  # the harness's gold rule, asked with one-hot predictions
        # gold_logprob by hand: log softmax(-ppl) at the gold choice
        logp = -record["ppl"][doc["label"]] - math.log(sum(math.exp(-p) for p in record["ppl"]))
        assert record_gold_logprob(record) == pytest.approx(logp)
        assert record["ppl"][0] == pytest.approx(direct_ppl(tiny_model, tokenizer, *requests[2 * docs.index(doc)]))
    assert metrics["gold_logprob"]["value"] == pytest.approx(sum(record_gold_logprob(r) for r in records) / 3)
    assert gold_choices(wino, wino_doc, 2) == [gold]
    assert acc_ppl["value"] == pytest.approx(sum(r["correct_ppl"] for r in records) / 3)


def test_continuous_choice_scores_by_hand():
    """gold_logprob and choice_kl on the PPL-score scale: p = softmax(-ppl) over the choices."""
    ppl = [1.0, 2.0, 4.0]
    z = math.exp(-1) + math.exp(-2) + math.exp(-4)
    assert gold_logprob(ppl, [0]) == pytest.approx(-1 - math.log(z))
    assert gold_logprob(ppl, [0, 1]) == pytest.approx(math.log((math.exp(-1) + math.exp(-2)) / z))
    p, q = [math.exp(-v) / z for v in ppl], [1 / 3] * 3
    assert choice_kl(ppl, [7.0, 7.0, 7.0]) == pytest.approx(sum(a * math.log(a / b) for a, b in zip(p, q)))
    assert choice_kl(ppl, ppl) == 0.0
    assert gold_logprob([1e4, 0.0], [0]) == pytest.approx(-1e4)  # no overflow at extreme scores


def test_stability_reports_the_mean_choice_kl():
    dense = [rec(i, [-1.0, -2.0], True, [1.0, 2.0], True) for i in range(3)]
    moved = [rec(i, [-2.0, -1.0], False, [2.0, 1.0], False) for i in range(3)]
    result = stability(dense, moved)
    assert result["choice_kl"] == pytest.approx(choice_kl([1.0, 2.0], [2.0, 1.0]))
    assert stability(dense, dense)["choice_kl"] == 0.0
