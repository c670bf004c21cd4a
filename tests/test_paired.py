"""Paired bootstrap intervals (issue 22, items 1-2): reporting/paired.py against hand computations and plain loops
over the same draws, on synthetic per-example records."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from streamline.atomic import write_json
from streamline.evaluation.stability import example_record, stability
from streamline.reporting.paired import Bootstrap, paired_rows

BOOT = Bootstrap(samples=2000, confidence=0.95, seed=0)
N = 400


def _records(rng: np.random.Generator, gold: np.ndarray, skill: float, noise: float, base: np.ndarray | None = None):
    """Per example 2-choice PPL scores: the gold choice lowered by `skill`, plus noise (around `base` if given)."""
    ppl = rng.normal(2.0, noise, size=(len(gold), 2)) if base is None else base + rng.normal(0, noise, base.shape)
    ppl[np.arange(len(gold)), gold] -= skill
    return ppl


def write_variant(folder, ppl: np.ndarray, gold: np.ndarray, window_nll: list[float], task: str = "t") -> dict:
    """samples/{task}.jsonl + .choices.json and ppl.json as the accuracy and perplexity steps write them."""
    samples = folder / "samples"
    samples.mkdir(parents=True)
    records, lines = [], []
    for i, (scores, g) in enumerate(zip(ppl, gold)):
        loglik = [-float(s) * 10 for s in scores]  # the harness's summed log-likelihoods (here: 10 tokens each)
        acc = float(int(np.argmax(loglik)) == g)
        sample = {"doc_id": i, "doc_hash": f"h{i}", "filtered_resps": [[v, False] for v in loglik], "acc": acc,
                  "acc_norm": acc}
        lines.append(json.dumps(sample))
        correct_ppl = bool(int(np.argmin(scores)) == g)
        records.append(example_record(sample, list(map(float, scores)), correct_ppl, [int(g)]))
    (samples / f"{task}.jsonl").write_text("\n".join(lines) + "\n")
    write_json(samples / f"{task}.choices.json", records)
    ppl_json = folder / "ppl.json"
    write_json(ppl_json, {"dataset": "wikitext2", "perplexity": None, "seq_len": 65, "window_nll": window_nll})
    return {"samples": str(samples), "perplexity": str(ppl_json), "records": records}


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    """dense; plain removal; `ffn` (clearly worse); `twin` (the removal's exact copy); `layer` (slightly better)."""
    folder = tmp_path_factory.mktemp("paired")
    rng = np.random.default_rng(7)
    gold = rng.integers(0, 2, N)
    dense_ppl = _records(rng, gold, 0.8, 0.5)
    removal_ppl = _records(rng, gold, 0.3, 0.5, base=dense_ppl)
    variants = {
        "dense": (dense_ppl, [100.0, 110.0, 90.0, 105.0]),
        "streamline-none/s0.25/k1": (removal_ppl, [200.0, 230.0, 190.0, 210.0]),
        "streamline-ffn/s0.25/k2": (_records(rng, gold, -0.2, 0.5, base=dense_ppl), [900.0, 990.0, 850.0, 950.0]),
        "streamline-twin/s0.25/k3": (removal_ppl, [200.0, 230.0, 190.0, 210.0]),
        "streamline-layer/s0.25/k4": (_records(rng, gold, 0.35, 0.5, base=removal_ppl), [180.0, 200.0, 170.0, 190.0]),
    }
    entries, records = [], {}
    for k, (name, (ppl, nll)) in enumerate(variants.items()):
        written = write_variant(folder / f"v{k}", ppl, gold, nll)
        records[name] = written.pop("records")
        method, healing = ("dense", "none") if name == "dense" else name.split("/")[0].split("-")
        entries.append({"model": "m", "variant": name, "method": method, "healing": healing,
                        "target": "" if name == "dense" else "s0.25", "training_scale": None, **written})
    return paired_rows(entries, BOOT), records, gold


def row(frame, variant, comparison, task, metric):
    found = frame[(frame.variant == variant) & (frame.comparison == comparison) & (frame.task == task)
                  & (frame.metric == metric)]
    assert len(found) == 1, (variant, comparison, task, metric)
    return found.iloc[0]


def test_values_equal_the_records_by_hand(experiment):
    frame, records, gold = experiment
    for name, recs in records.items():
        acc_ppl = np.mean([r["correct_ppl"] for r in recs])
        assert row(frame, name, "value", "t", "acc_ppl")["value"] == pytest.approx(acc_ppl)
        logp = [-r["ppl"][g] - math.log(sum(math.exp(-s) for s in r["ppl"])) for r, g in zip(recs, gold)]
        assert row(frame, name, "value", "t", "gold_logprob")["value"] == pytest.approx(np.mean(logp))
        assert row(frame, name, "value", "t", "acc")["value"] == pytest.approx(np.mean([r["correct"] for r in recs]))
        if name != "dense":  # stability.py computes stability and choice_kl on its own path
            own = stability(records["dense"], recs)
            assert row(frame, name, "value", "t", "stability")["value"] == pytest.approx(own["stability"])
            assert row(frame, name, "value", "t", "choice_kl")["value"] == pytest.approx(own["choice_kl"])
    assert row(frame, "dense", "value", "t", "choice_kl")["value"] == 0.0
    # perplexity: exp(sum NLL / (windows x (seq_len - 1) tokens)) over the 4 windows
    assert row(frame, "dense", "value", "wikitext2", "perplexity")["value"] == pytest.approx(math.exp(405 / (4 * 64)))
    # RA: 100 x Avg accuracy (acc_ppl, the preferred metric) / the dense model's
    ra = row(frame, "streamline-ffn/s0.25/k2", "value", "Avg", "RA")["value"]
    avg = row(frame, "streamline-ffn/s0.25/k2", "value", "Avg", "accuracy")["value"]
    assert ra == pytest.approx(100 * avg / row(frame, "dense", "value", "Avg", "accuracy")["value"])


def test_difference_interval_equals_a_plain_loop_over_the_same_draws(experiment):
    frame, records, _ = experiment
    idx = BOOT.indices(N, "m", "t")  # the draws of model m, task t: the same for every variant
    a = [float(r["correct_ppl"]) for r in records["streamline-ffn/s0.25/k2"]]
    b = [float(r["correct_ppl"]) for r in records["streamline-none/s0.25/k1"]]
    diffs = [sum(a[i] - b[i] for i in draw) / N for draw in idx]
    got = row(frame, "streamline-ffn/s0.25/k2", "removal", "t", "acc_ppl")
    assert (got["low"], got["high"]) == pytest.approx(tuple(np.quantile(diffs, [0.025, 0.975])))
    assert got["difference"] == pytest.approx(np.mean(a) - np.mean(b)) and got["reference"] == "streamline-none/s0.25/k1"
    # and it is close to the normal approximation of a paired difference: 1.96 sd(a - b) / sqrt(n)
    half = (got["high"] - got["low"]) / 2
    assert half == pytest.approx(1.96 * np.std(np.subtract(a, b)) / math.sqrt(N), rel=0.15)


def test_identical_variants_differ_by_exactly_zero_and_are_not_resolved(experiment):
    frame, _, _ = experiment
    twin = frame[(frame.variant == "streamline-twin/s0.25/k3") & (frame.comparison == "removal")]
    assert len(twin) > 5 and (twin["difference"] == 0).all() and (twin["low"] == 0).all() and (twin["high"] == 0).all()
    assert not twin["resolved"].any()


def test_a_clearly_worse_variant_is_resolved_and_marked_by_direction(experiment):
    frame, _, _ = experiment
    ffn = row(frame, "streamline-ffn/s0.25/k2", "removal", "Avg", "accuracy")
    assert ffn["resolved"] and ffn["high"] < 0
    ppl = row(frame, "streamline-ffn/s0.25/k2", "removal", "wikitext2", "perplexity")
    assert ppl["resolved"] and ppl["low"] > 0  # higher perplexity than plain removal on every draw of 4 windows


def test_runner_up_rows_compare_the_best_with_the_second(experiment):
    frame, _, _ = experiment
    best = frame[(frame.comparison == "runner_up") & (frame.task == "wikitext2")].iloc[0]
    # lowest perplexity is best: layer (NLL 740) before none and twin (830)
    assert best["variant"] == "streamline-layer/s0.25/k4" and best["difference"] < 0
    kl = frame[(frame.comparison == "runner_up") & (frame.metric == "choice_kl") & (frame.task == "t")].iloc[0]
    values = frame[(frame.comparison == "value") & (frame.metric == "choice_kl") & (frame.task == "t")
                   & (frame.variant != "dense")].set_index("variant")["value"]
    assert kl["variant"] == values.idxmin()  # lower KL is better


def test_avg_is_stratified_by_task(tmp_path):
    """Two tasks: the Avg draws are the mean of each task's own draws."""
    rng = np.random.default_rng(1)
    entries = []
    for k, name in enumerate(["dense", "a-none/s0.5/k"]):
        folder = tmp_path / f"v{k}"
        gold = np.arange(30) % 2
        first = write_variant(folder, _records(np.random.default_rng(k), gold, 0.5, 1.0), gold, [10.0, 11.0], "t1")
        gold2 = np.arange(50) % 2
        write_variant(tmp_path / f"w{k}", _records(rng, gold2, 0.2, 1.0), gold2, [10.0, 11.0], "t2")
        (folder / "samples" / "t2.jsonl").write_text((tmp_path / f"w{k}/samples/t2.jsonl").read_text())
        (folder / "samples" / "t2.choices.json").write_text((tmp_path / f"w{k}/samples/t2.choices.json").read_text())
        entries.append({"model": "m", "variant": name, "method": name.split("-")[0], "healing": "none",
                        "target": "" if k == 0 else "s0.5", "training_scale": None, "samples": first["samples"],
                        "perplexity": first["perplexity"]})
    frame = paired_rows(entries, BOOT)
    t1, t2 = (row(frame, "a-none/s0.5/k", "dense", t, "acc_ppl") for t in ("t1", "t2"))
    avg = row(frame, "a-none/s0.5/k", "dense", "Avg", "accuracy")
    assert avg["difference"] == pytest.approx((t1["difference"] + t2["difference"]) / 2) and avg["n"] == 80
    draws = [BOOT.indices(30, "m", "t1"), BOOT.indices(50, "m", "t2")]
    assert draws[0].shape == (2000, 30) and not np.array_equal(draws[0][:, :30], draws[1][:, :30])


def test_reruns_are_identical_and_misaligned_logs_are_one_line(experiment, tmp_path):
    frame, _, _ = experiment
    assert BOOT.indices(10, "m", "t").tolist() == BOOT.indices(10, "m", "t").tolist()
    gold = np.array([0, 1, 0])
    dense = write_variant(tmp_path / "d", _records(np.random.default_rng(0), gold, 1, 1), gold, [1.0])
    other = write_variant(tmp_path / "o", _records(np.random.default_rng(0), gold[:2], 1, 1), gold[:2], [1.0])
    entries = [{"model": "m", "variant": "dense", "method": "dense", "healing": "none", "target": "", **dense},
               {"model": "m", "variant": "x-none/s0.5/k", "method": "x", "healing": "none", "target": "s0.5", **other}]
    for entry in entries:
        entry.pop("records")
    with pytest.raises(ValueError, match=r"m/x-none/s0.5/k t: its examples are not the dense model's .*\[2\]"):
        paired_rows(entries, BOOT)
    assert isinstance(frame, pd.DataFrame)
