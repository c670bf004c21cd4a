"""Issue 22, item 3: multiple-choice scoring that computes each shared context once (streamline/evaluation/shared_context.py)
gives the harness's own numbers: per-choice log-likelihoods within 1e-4 (float32), identical is_greedy flags and
accuracies, the same PPL scores from the same store, on the four default mirror tasks and on a user task; and it
takes the harness's path where its layout would not be exact."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from conftest import MIRROR, REPO

from streamline.evaluation import choice_nll
from streamline.evaluation import harness as evaluate
from streamline.evaluation.choice_nll import capture_input_logprobs, harness_lm, load_task, task_ppl_records
from streamline.evaluation.shared_context import (
    SCORERS,
    Row,
    SharedContextLM,
    fill_lines,
    group_rows,
    harness_row,
    pack,
)
from streamline.workflow.config_schema import defaults, schema_file

DEFAULT_TASKS = ["hellaswag_mirror", "piqa_mirror", "arc_easy_mirror", "winogrande_mirror"]
TOLERANCE = 1e-4  # per choice, float32 (issue 22)


def tolerance(loglik: float) -> float:
    """TOLERANCE, or one float32 step of the value where that is coarser: a summed log-likelihood beyond 1024 in
    magnitude (the tiny model's 300-token vocabulary makes long rows) moves in steps of 1.2e-4, and the harness
    itself differs from its own numbers by such a step at another batch size."""
    return max(TOLERANCE, float(np.spacing(np.float32(abs(loglik)))))


needs_mirror = pytest.mark.skipif(not (MIRROR / "piqa").is_dir(), reason="needs the data mirror")


def run_both(model, tokenizer, tasks, limit, manager, batch_size=3, max_length=None):
    """evaluate_tasks once per scorer, each HFLM recording its rows' log-probs: {scorer: (metrics, samples, raw,
    lm, store)}."""
    out = {}
    for scorer in SCORERS:
        lm = harness_lm(model, tokenizer, batch_size, scorer)
        if max_length is not None:
            lm._max_length = max_length  # what HFLM(max_length=...) sets
        store = capture_input_logprobs(lm)
        metrics, samples, raw = evaluate.evaluate_tasks(
            model,
            tokenizer,
            tasks,
            {t: limit for t in tasks},
            batch_size=batch_size,
            seed=1,
            manager=manager,
            lm=lm,
            bootstrap_iters=0,
        )
        out[scorer] = (metrics, samples, raw, lm, store)
    return out


def assert_same_answers(harness_samples, shared_samples):
    """Every choice's log-likelihood within `tolerance`, is_greedy and the harness's metrics identical."""
    worst = 0.0
    assert [s["doc_id"] for s in harness_samples] == [s["doc_id"] for s in shared_samples]
    for h, s in zip(harness_samples, shared_samples):
        assert h["arguments"] == s["arguments"]
        for (h_resp,), (s_resp,) in zip(h["resps"], s["resps"]):
            assert abs(h_resp[0] - s_resp[0]) <= tolerance(h_resp[0])
            worst = max(worst, abs(h_resp[0] - s_resp[0]))
            assert s_resp[1] == h_resp[1]  # is_greedy
        for metric in ("acc", "acc_norm"):
            assert s.get(metric) == h.get(metric)
    return worst



def assert_same_metrics(shared, harness, continuous=("gold_logprob", "choice_kl")):
    """Equal metric dicts: accuracies exactly; the continuous scores (means of per-example log-probabilities,
    summed in another order by the two layouts) within 1e-5 relative (a choice's log-likelihood: 1e-4)."""
    assert shared.keys() == harness.keys()
    for key, value in harness.items():
        if isinstance(value, dict) and key in continuous:
            assert shared[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
        elif isinstance(value, dict):
            assert_same_metrics(shared[key], value, continuous)
        else:
            assert shared[key] == value, key


@needs_mirror
def test_default_tasks_match_the_harness(tiny_model, tokenizer, monkeypatch):
    manager = evaluate.task_manager([], MIRROR)
    both = run_both(tiny_model, tokenizer, DEFAULT_TASKS, limit=5, manager=manager, max_length=1024)
    h_metrics, h_samples, h_raw, h_lm, h_store = both["harness"]
    s_metrics, s_samples, s_raw, s_lm, s_store = both["shared"]
    assert not isinstance(h_lm, SharedContextLM) and "scorer" not in h_raw["piqa_mirror"]
    for task in DEFAULT_TASKS:
        assert_same_answers(h_samples[task], s_samples[task])
        assert s_metrics[task] == h_metrics[task]
        # every task, winogrande's partial scoring included (its options share the sentence up to the blank),
        # took the shared path and computed fewer tokens than the harness
        [path] = s_raw[task]["scorer"]
        assert path["path"] == "shared" and path["requests"] == sum(len(s["arguments"]) for s in s_samples[task])
        assert path["tokens"] < path["harness_tokens"]

    # The PPL scores read the shared scorer's store: no context is run again, and they equal the harness's.
    def no_forward(model, sequences, batch_size=8):
        assert all(len(s) <= 1 for s in sequences), "a context the shared scorer should have recorded was re-run"
        return [0.0] * len(sequences)

    monkeypatch.setattr(choice_nll, "sequence_nll", no_forward)
    for task in DEFAULT_TASKS:
        task_obj = load_task(manager, task)
        h_records, h_acc = task_ppl_records(tiny_model, h_lm, task_obj, h_samples[task], captured=h_store)
        s_records, s_acc = task_ppl_records(tiny_model, s_lm, task_obj, s_samples[task], captured=s_store)
        assert_same_metrics(s_acc, h_acc)
        for h, s in zip(h_records, s_records):
            assert s["ppl"] == pytest.approx(h["ppl"], rel=1e-6, abs=1e-6)
            assert (s["pred_ppl"], s["correct_ppl"], s["pred"], s["correct"]) == (
                h["pred_ppl"],
                h["correct_ppl"],
                h["pred"],
                h["correct"],
            )


USER_ROWS = [  # what the shared layout must get right: shared first tokens, one-token choices, one choice a
    # prefix of another, an empty context (the harness's prefix token), a context with a trailing space
    {
        "question": "The quick brown fox",
        "choices": [" jumps over the lazy dog.", " jumps.", " saves nine.", " jumps over"],
        "gold": 0,
    },
    {"question": "A stitch in time saves", "choices": [" nine", " a", " the", " A"], "gold": 0},
    {"question": "", "choices": ["The quick brown fox.", "Language models predict.", "The lazy dog."], "gold": 1},
    {
        "question": "Language models predict the next token ",
        "choices": ["from the previous ones.", "quickly.", "from the lazy dog."],
        "gold": 0,
    },
    {"question": "Q: which one?\nA:", "choices": [" fox", " dog", " time", " nine", " token", " models"], "gold": 3},
]


def write_user_task(folder):
    folder.mkdir()
    data = folder / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in USER_ROWS))
    (folder / "my_choices.yaml").write_text(
        yaml.safe_dump(
            {
                "task": "my_choices",
                "dataset_path": "json",
                "dataset_kwargs": {"data_files": {"test": str(data)}},
                "test_split": "test",
                "output_type": "multiple_choice",
                "doc_to_text": "{{question}}",
                "doc_to_choice": "{{choices}}",
                "doc_to_target": "gold",
                "metric_list": [{"metric": "acc"}, {"metric": "acc_norm"}],
            }
        )
    )
    return folder


def test_user_task_matches_the_harness(tiny_model, tokenizer, tmp_path):
    manager = evaluate.task_manager([write_user_task(tmp_path / "tasks")], None)
    both = run_both(tiny_model, tokenizer, ["my_choices"], limit=None, manager=manager, batch_size=2)
    assert_same_answers(both["harness"][1]["my_choices"], both["shared"][1]["my_choices"])
    assert both["shared"][0] == both["harness"][0]
    assert [p["path"] for p in both["shared"][2]["my_choices"]["scorer"]] == ["shared"]
    # the stores hold the same rows with the same log-probs (the PPL scores' context part)
    h_store, s_store = both["harness"][4], both["shared"][4]
    assert s_store.keys() == h_store.keys()
    for key, value in h_store.items():
        assert torch.allclose(s_store[key], value, atol=1e-5)


def test_left_truncated_rows_match_the_harness(tiny_model, tokenizer, tmp_path):
    """Rows longer than max_length + 1 are left-truncated by the harness, so choices of one context no longer
    share the same prefix; the rows the shared scorer builds are the harness's own."""
    manager = evaluate.task_manager([write_user_task(tmp_path / "tasks")], None)
    both = run_both(tiny_model, tokenizer, ["my_choices"], limit=None, manager=manager, max_length=16)
    assert_same_answers(both["harness"][1]["my_choices"], both["shared"][1]["my_choices"])
    lm = both["shared"][3]
    pairs = [lm._encode_pair(r["question"], c) for r in USER_ROWS if r["question"] for c in r["choices"]]
    assert max(len(c) + len(k) for c, k in pairs) > 17  # some rows were truncated
    assert all(len(harness_row(c, k, 16).tokens) <= 16 for c, k in pairs)


def test_pack_by_hand():
    rows = [Row((5, 6, 7, 1), 2, (1, 2)), Row((5, 6, 7), 3, (3,)), Row((5, 6, 7, 4, 4), 9, (4, 4, 9))]
    assert group_rows(rows) == [(3, [1, 0, 2])]  # sorted by tokens; the shared prefix is (5, 6, 7)
    packed = pack(rows, [[(3, [0, 1, 2])]], torch.bool)
    assert packed.ids.tolist() == [[5, 6, 7, 1, 4, 4]]
    assert packed.positions.tolist() == [[0, 1, 2, 3, 3, 4]]
    assert packed.where == [[[0, 1, 2, 3], [0, 1, 2], [0, 1, 2, 4, 5]]]
    allowed = packed.mask[0, 0].int().tolist()
    assert allowed == [
        [1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0],
        [1, 1, 1, 1, 0, 0],  # row 0's remainder: the prefix and itself
        [1, 1, 1, 0, 1, 0],  # row 2's remainder: the prefix, not row 0's token
        [1, 1, 1, 0, 1, 1],
    ]
    # two lines in one batch: the shorter one is right-padded, a padding token sees only itself
    packed = pack(rows, [[(3, [0, 1, 2])], [(4, [0])]], torch.float32)
    assert packed.ids.tolist()[1] == [5, 6, 7, 1, 0, 0]
    assert (
        packed.mask[1, 0, 4] == torch.tensor([torch.finfo(torch.float32).min] * 4 + [0, torch.finfo(torch.float32).min])
    ).all()


def test_pack_two_groups_on_one_line_by_hand():
    """A second group on a line restarts its positions and sees only itself (block-diagonal mask)."""
    rows = [Row((5, 6, 1), 2, (1, 2)), Row((5, 6, 3), 3, (3,)), Row((8, 9), 4, (9, 4))]
    packed = pack(rows, [[(2, [0, 1]), (2, [2])]], torch.bool)
    assert packed.ids.tolist() == [[5, 6, 1, 3, 8, 9]]
    assert packed.positions.tolist() == [[0, 1, 2, 2, 0, 1]]
    assert packed.where == [[[0, 1, 2], [0, 1, 3], [4, 5]]]
    assert packed.mask[0, 0].int().tolist() == [
        [1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0],
        [1, 1, 0, 1, 0, 0],
        [0, 0, 0, 0, 1, 0],  # the second group: not the first group's tokens
        [0, 0, 0, 0, 1, 1],
    ]


def test_fill_lines_first_fit_decreasing():
    rows = [Row(tuple(range(n)), 0, (0,)) for n in (10, 6, 5, 4, 3)]
    lines = fill_lines(rows, [(n, [i]) for i, n in enumerate((10, 6, 5, 4, 3))])
    # width 10 (the longest group): 10 | 6 + 4 | 5 + 3, longest first
    assert lines == [[(10, [0])], [(6, [1]), (4, [3])], [(5, [2]), (3, [4])]]


def test_group_rows_keeps_unrelated_rows_apart():
    shared_start = (1, 2)  # e.g. "Question:" in every ARC example: too short a share to pack documents together
    doc_a = [Row(shared_start + (3, 3, 3, 3, 3, 3) + (c,), c, (c,)) for c in (7, 8)]
    doc_b = [Row(shared_start + (4, 4, 4, 4, 4, 4) + (c,), c, (c,)) for c in (7, 8)]
    assert group_rows(doc_a + doc_b) == [(8, [0, 1]), (8, [2, 3])]
    lone = [Row((9,) + tuple(range(20, 30)), 1, (1,))]
    assert group_rows(lone) == [(11, [0])]


# ---- the harness path where the packed layout is not known to be exact -------------------------------------------
def fallback_paths(model, tokenizer, tmp_path):
    manager = evaluate.task_manager([write_user_task(tmp_path / "tasks")], None)
    both = run_both(model, tokenizer, ["my_choices"], limit=None, manager=manager, batch_size=2)
    # the harness path gives the harness's numbers exactly
    for h, s in zip(both["harness"][1]["my_choices"], both["shared"][1]["my_choices"]):
        assert s["resps"] == h["resps"]
    [path] = both["shared"][2]["my_choices"]["scorer"]
    assert path["path"] == "harness"
    return path["reason"]


def test_sliding_window_shorter_than_a_row_takes_the_harness_path(tiny_model, tokenizer, tmp_path):
    tiny_model.config.sliding_window = 4
    assert "longer than the model's attention window of 4 tokens" in fallback_paths(tiny_model, tokenizer, tmp_path)


@pytest.mark.parametrize("ignored", ["position_ids", "attention_mask"])
def test_a_model_that_ignores_the_layout_takes_the_harness_path(tiny_model, tokenizer, tmp_path, ignored):
    """A model that derives positions itself, or builds its own causal mask, fails the probe."""
    forward = tiny_model.forward

    def ignoring(*args, **kwargs):
        kwargs.pop(ignored, None)
        return forward(*args, **kwargs)

    tiny_model.forward = ignoring
    assert "differ from the harness's" in fallback_paths(tiny_model, tokenizer, tmp_path)


def test_flash_attention_takes_the_harness_path(tiny_model, tokenizer, tmp_path):
    lm = harness_lm(tiny_model, tokenizer, 2, "shared")
    tiny_model.config._attn_implementation = "flash_attention_2"
    rows = [Row((1, 2, 3), 4, (4,))]
    from streamline.evaluation.shared_context import shared_layout_problem

    assert "may not honour a 4D mask" in shared_layout_problem(lm, rows, 2)


# ---- the switch ------------------------------------------------------------------------------------------------
def test_scorer_switch_default_and_values():
    key = schema_file()["properties"]["evaluation"]["properties"]["scorer"]
    assert key["enum"] == list(SCORERS) and key["default"] == "shared" == defaults("evaluation")["scorer"]
    import inspect

    assert inspect.signature(harness_lm).parameters["scorer"].default == key["default"]
    assert inspect.signature(evaluate.evaluate_tasks).parameters["scorer"].default == key["default"]
    with pytest.raises(ValueError, match="evaluation.scorer 'fast' is not one of shared, harness"):
        harness_lm(None, None, 1, "fast")
    steps = (REPO / "streamline" / "workflow" / "steps.py").read_text()
    assert 'choice_nll.harness_lm(model, tokenizer, evaluation["batch_size"], evaluation["scorer"])' in steps


@needs_mirror
def test_accuracy_step_records_the_path_and_the_same_scores(tiny_checkpoint, tmp_path):
    from streamline.workflow.steps import accuracy_step

    run = {"data_mirror": str(MIRROR), "dtype": "float32", "device": "cpu"}
    choices = {}
    for scorer in SCORERS:
        evaluation = {
            **defaults("evaluation"),
            "tasks": ["piqa_mirror", "winogrande_mirror"],
            "limit": 3,
            "batch_size": 2,
            "scorer": scorer,
        }
        out = tmp_path / scorer
        metrics = accuracy_step(
            model_dir=tiny_checkpoint,
            evaluation=evaluation,
            run=run,
            accuracy_path=out / "accuracy.json",
            samples_dir=out / "samples",
        )
        raw = json.loads((out / "lm_eval_results.json").read_text())
        assert ("scorer" in raw["piqa_mirror"]) == (scorer == "shared")
        choices[scorer] = (metrics, json.loads((out / "samples" / "piqa_mirror.choices.json").read_text()))
    (h_metrics, h_choices), (s_metrics, s_choices) = choices["harness"], choices["shared"]
    assert_same_metrics(s_metrics, h_metrics)
    assert [r["pred_ppl"] for r in s_choices] == [r["pred_ppl"] for r in h_choices]
    for h, s in zip(h_choices, s_choices):
        assert s["ppl"] == pytest.approx(h["ppl"], rel=1e-6) and s["scores"] == pytest.approx(
            h["scores"], abs=TOLERANCE
        )
