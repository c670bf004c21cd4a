"""Bad input, interruption and determinism."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import MIRROR

from streamline.acquisition.models import ModelSourceError, acquire_model, load_model
from streamline.atomic import write_json
from streamline.data import calibration_text, resolve_mirror
from streamline.token_windows import sample_windows
from streamline.workflow.config_schema import defaults
from streamline.workflow.record_steps import importance_step, prune_step
from streamline.workflow.steps import similarity_step

RUN = {"dtype": "float32", "device": "cpu", "data_mirror": str(MIRROR)}
CALIBRATION = {"dataset": "wikitext2", "samples": 3, "seq_len": 16, "batch_size": 2, "seed": 0}


def test_importance_is_bit_identical_across_runs(tiny_checkpoint, tmp_path):
    outputs = []
    for run in ("a", "b"):
        pairs = tmp_path / run / "pairs.safetensors"
        similarity_step(model_dir=tiny_checkpoint, out_path=pairs, calibration=CALIBRATION, run=RUN)
        importance_step(
            pairs_path=pairs,
            metric="cosine",
            csv_path=tmp_path / run / "cosine.csv",
            png_path=tmp_path / run / "cosine.png",
            title="t",
        )
        prune_step(
            scores=tmp_path / run / "cosine.csv",
            manifest_path=tiny_checkpoint / "manifest.json",
            sparsity=0.3,
            layers=None,
            healing="none",
            method="streamline",
            settings={},
            sparsity_of="layers",
            plan_path=tmp_path / run / "plan.json",
        )
        outputs.append(((tmp_path / run / "cosine.csv").read_bytes(), (tmp_path / run / "plan.json").read_bytes()))
    assert outputs[0] == outputs[1]
    assert (tmp_path / "a" / "provenance.json").is_file()


def test_calibration_text_shorter_than_one_sequence(tokenizer):
    with pytest.raises(ValueError, match=r"calibration text has \d+ tokens, fewer than one sequence of seq_len=64"):
        sample_windows(tokenizer, "too short", 2, 64, 0)


def test_unknown_calibration_dataset():
    with pytest.raises(
        ValueError, match="calibration dataset 'nope' is neither one of c4, tinystories, wiki, wikitext2"
    ):
        calibration_text("nope", MIRROR)


def test_missing_mirror_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="data mirror .* is not a folder"):
        resolve_mirror(str(tmp_path / "absent"))


def test_missing_local_model(tmp_path):
    with pytest.raises(ModelSourceError, match="model 'm': local path .* has no config.json"):
        acquire_model("m", {"local": str(tmp_path / "absent")}, tmp_path / "out")
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_missing_gguf_package(tmp_path):
    with pytest.raises(ModelSourceError, match="package 'no-such-pkg' is not installed"):
        acquire_model("m", {"gguf": "no-such-pkg"}, tmp_path / "out")


def test_truncated_safetensors_is_refused(tiny_checkpoint):
    weights = tiny_checkpoint / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(RuntimeError, match="is damaged: model.safetensors is truncated"):
        load_model(tiny_checkpoint)


def test_local_source_is_not_modified(tiny_checkpoint, tmp_path):
    before = {p.name: p.read_bytes() for p in tiny_checkpoint.iterdir()}
    acquire_model("tiny", {"local": str(tiny_checkpoint)}, tmp_path / "copy")
    assert {p.name: p.read_bytes() for p in tiny_checkpoint.iterdir()} == before
    assert (tmp_path / "copy" / "manifest.json").is_file()


def test_killed_write_leaves_no_complete_looking_file(tmp_path):
    target = tmp_path / "out.json"
    code = textwrap.dedent(f"""
        import os, signal
        from streamline.atomic import atomic_path
        with atomic_path({str(target)!r}) as tmp:
            tmp.write_text('{{"half": ')
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True)
    assert proc.returncode == -signal.SIGKILL
    assert not target.exists()
    # What a SIGKILL leaves is a hidden temporary file, never the target name.
    assert all(p.startswith(".out.json.") and p.endswith(".tmp") for p in os.listdir(tmp_path))
    write_json(target, {"ok": 1})
    assert target.read_text() == '{\n  "ok": 1\n}\n'


def test_mirror_task_with_missing_data_file(tmp_path):
    from streamline.evaluation.harness import PROJECT_TASKS

    sys.path.insert(0, str(PROJECT_TASKS))
    import mirror_data

    with pytest.raises(FileNotFoundError, match="mirror task data file .*nope.jsonl' does not exist"):
        mirror_data.load("nope.jsonl", data_mirror=str(tmp_path))


def test_nan_hidden_states_stop_replacement(tiny_model, tmp_path):
    from streamline.healing.replace import cache_pairs

    tiny_model.model.layers[0].mlp.down_proj.weight.data.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="hold NaN/Inf"):
        cache_pairs(tiny_model, torch.randint(0, 100, (2, 5)), 1, 3, tmp_path, 2)


def test_evaluation_numbers_are_identical_across_runs(tiny_checkpoint, tmp_path):
    from streamline.workflow.steps import accuracy_step, perplexity_step

    evaluation = {**defaults("evaluation"), "tasks": ["piqa_mirror", "winogrande_mirror"], "limit": 3,
                  "batch_size": 2, "seed": 1}
    outputs = []
    for run in ("a", "b"):
        accuracy_step(model_dir=tiny_checkpoint, evaluation=evaluation, run=RUN,
                      accuracy_path=tmp_path / run / "accuracy.json", samples_dir=tmp_path / run / "samples")
        perplexity_step(
            model_dir=tiny_checkpoint,
            settings={"dataset": "wikitext2", "seq_len": 32, "batch_size": 2, "max_windows": 2},
            run=RUN,
            out_path=tmp_path / run / "ppl.json",
        )
        outputs.append(
            [
                (tmp_path / run / name).read_bytes()
                for name in ("accuracy.json", "ppl.json", "samples/piqa_mirror.choices.json")
            ]
        )
    assert outputs[0] == outputs[1]


def test_unknown_task_is_named():
    from streamline.evaluation.harness import check_tasks, task_manager

    manager = task_manager([], MIRROR)
    with pytest.raises(
        ValueError,
        match="evaluation task 'hellaswagg' is unknown; mirror tasks: arc_challenge_mirror, arc_easy_mirror, "
        "boolq_mirror, hellaswag_mirror, lambada_openai_mirror, openbookqa_mirror, piqa_mirror, rte_mirror",
    ):
        check_tasks(manager, ["piqa_mirror", "hellaswagg"])


def test_missing_extra_task_dir(tmp_path):
    from streamline.evaluation.harness import task_manager

    with pytest.raises(FileNotFoundError, match="task folder .*absent' \\(extra_task_dirs\\) does not exist"):
        task_manager([tmp_path / "absent"], MIRROR)


def test_unknown_method_in_prune_step(tiny_checkpoint, tmp_path):
    with pytest.raises(ValueError, match="method 'magic' is unknown; allowed: streamline, gromov, last-n"):
        prune_step(
            scores=tmp_path / "none.csv",
            manifest_path=tiny_checkpoint / "manifest.json",
            sparsity=0.3,
            layers=None,
            healing="none",
            method="magic",
            settings={},
            sparsity_of="layers",
            plan_path=tmp_path / "plan.json",
        )
    assert not (tmp_path / "plan.json").exists()
