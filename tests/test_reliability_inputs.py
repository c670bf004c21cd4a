"""Issue 17: no silently wrong model, no stale result, messages that name the file, the line and the key.

One test per case of the issue (numbered as there). Workflow cases use Snakemake dry runs (`-n`) on a tiny local
checkpoint; outputs a dry run should find up to date are written by hand.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import MIRROR, TEXT, dag_paths, make_model, save_tiny_checkpoint, snakemake_cmd

from streamline.acquisition.checkpoint_files import checkpoint_parameters
from streamline.acquisition.models import ModelSourceError, acquire_model, load_model
from streamline.data import calibration_text, perplexity_text
from streamline.token_windows import sample_windows
from streamline.workflow.checks import config_seq_lens

# Short sequences: the tiny model has max_position_embeddings=256.
BASE = {
    "data_mirror": str(MIRROR),
    "calibration": {"seq_len": 32},
    "training": {"seq_len": 32},
    "perplexity": {"seq_len": 64},
}


@pytest.fixture()
def local_model(tokenizer, tmp_path) -> Path:
    return save_tiny_checkpoint(make_model(len(tokenizer), num_layers=8), tokenizer, tmp_path / "src")


def dry_run(workdir: Path, config: dict, *args: str, config_name: str = "config.yaml") -> str:
    """`snakemake -n` in `workdir` with `config`; returns its stdout + stderr and the exit code."""
    (workdir / config_name).write_text(yaml.safe_dump(config))
    cmd = snakemake_cmd(workdir, workdir / config_name, "-n", *args)
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    return result.stdout + result.stderr, result.returncode


def config_error(workdir: Path, config: dict) -> str:
    text, code = dry_run(workdir, config)
    assert code != 0, text[-2000:]
    return [line for line in text.splitlines() if line.startswith("config error")][0]


def fake_outputs(workdir: Path, files: list[str], folders: list[str] = ()) -> None:
    """Outputs made by hand, newer than every input, so a dry run finds them up to date."""
    future = time.time() + 60
    for name in [*files, *folders]:
        path = workdir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if name in folders:
            path.mkdir(exist_ok=True)
        else:
            path.write_text("{}")
        os.utime(path, (future, future))


def rule_reasons(text: str) -> dict[str, str]:
    """rule -> its first `reason:` line in a dry run's output."""
    reasons, rule = {}, None
    for line in text.splitlines():
        if line.startswith("rule "):
            rule = line.removeprefix("rule ").rstrip(":")
        elif line.strip().startswith("reason:") and rule and rule not in reasons:
            reasons[rule] = line.strip().removeprefix("reason: ")
    return reasons


# 1. config.json and weights disagree on the layer count ---------------------------------------------------------
@pytest.mark.parametrize(
    ("declared", "problem"),
    [
        (10, "18 weights missing (layers 8, 9; first: model.layers.8.input_layernorm.weight)"),
        (6, "18 weights unused (layers 6, 7; first: model.layers.6.input_layernorm.weight)"),
    ],
)
def test_acquisition_refuses_weights_that_do_not_match_config(local_model, tmp_path, declared, problem):
    config = json.loads((local_model / "config.json").read_text())
    (local_model / "config.json").write_text(json.dumps({**config, "num_hidden_layers": declared}))
    with pytest.raises(ModelSourceError) as err:
        acquire_model("m", {"local": str(local_model)}, tmp_path / "out")
    # 9 tensors per Llama layer (q, k, v, o, gate, up, down, two norms) x the 2 layers in dispute.
    assert str(err.value) == (
        f"model 'm': the weights in {str(local_model)!r} do not match its config.json "
        f"(num_hidden_layers={declared}): {problem}"
    )
    assert not (tmp_path / "out" / "manifest.json").exists()


# 2. sources changed in place, damaged checkpoints ---------------------------------------------------------------
def test_manifest_records_content_hash_of_local_source(local_model, tokenizer, tmp_path):
    first = acquire_model("m", {"local": str(local_model)}, tmp_path / "a")["source"]["content"]
    digest = hashlib.sha256()
    for name in ("config.json", "model.safetensors"):
        digest.update(name.encode() + b"\0" + hashlib.sha256((local_model / name).read_bytes()).hexdigest().encode())
    assert first == {"sha256": digest.hexdigest(), "files": ["config.json", "model.safetensors"]}
    make_model(len(tokenizer), num_layers=8, seed=1).save_pretrained(local_model)  # same files, other weights
    second = acquire_model("m", {"local": str(local_model)}, tmp_path / "b")["source"]["content"]
    assert second["sha256"] != first["sha256"]
    assert json.loads((tmp_path / "b" / "manifest.json").read_text())["source"]["content"] == second


def test_local_model_replaced_in_place_reruns_acquisition(local_model, tokenizer, tmp_path):
    config = {"models": {"tiny": {"local": str(local_model)}}, **BASE}
    target = "results/models/tiny/manifest.json"
    fake_outputs(tmp_path, [target, "results/models/tiny/provenance.json"])
    text, code = dry_run(tmp_path, config, target)
    assert code == 0 and "Nothing to be done" in text, text[-2000:]
    make_model(len(tokenizer), num_layers=8, seed=1).save_pretrained(local_model)
    for path in local_model.iterdir():  # the copy lands after the outputs were made
        os.utime(path, (time.time() + 120, time.time() + 120))
    text, code = dry_run(tmp_path, config, target)
    assert code == 0
    assert rule_reasons(text)["acquire_model"].startswith(f"Updated input files: {local_model}/")
    # The command a damaged checkpoint's message suggests rebuilds it.
    text, code = dry_run(tmp_path, config, "--forcerun", target)
    assert code == 0 and rule_reasons(text)["acquire_model"] == "Forced execution"


def test_edited_task_yaml_reruns_accuracy(local_model, tmp_path):
    tasks = tmp_path / "my_tasks"
    tasks.mkdir()
    (tasks / "my_task.yaml").write_text("task: my_task\n")
    config = {
        "models": {"tiny": {"local": str(local_model)}},
        **BASE,
        "evaluation": {"tasks": ["my_task"], "extra_task_dirs": [str(tasks)]},
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    [accuracy] = dag_paths(tmp_path, tmp_path / "config.yaml", "results/eval/tiny/dense/accuracy-*/accuracy.json")
    dense = str(Path(accuracy).parent)  # results/eval/tiny/dense/accuracy-{key}
    fake_outputs(
        tmp_path,
        ["results/models/tiny/manifest.json", "results/models/tiny/provenance.json", f"{dense}/accuracy.json",
         f"{dense}/provenance.json"],
        [f"{dense}/samples"],
    )
    text, code = dry_run(tmp_path, config, f"{dense}/accuracy.json")
    assert code == 0 and "Nothing to be done" in text, text[-2000:]
    (tasks / "my_task.yaml").write_text("task: my_task\nnum_fewshot: 1\n")
    os.utime(tasks / "my_task.yaml", (time.time() + 120, time.time() + 120))
    text, code = dry_run(tmp_path, config, f"{dense}/accuracy.json")
    assert code == 0
    assert rule_reasons(text) == {"accuracy": f"Updated input files: {tasks / 'my_task.yaml'}"}


@pytest.mark.parametrize("damage", ["deleted", "truncated"])
@pytest.mark.parametrize("marker", ["manifest.json", "compressed.json"])
def test_damaged_checkpoint_names_the_rebuild_command(tiny_checkpoint, damage, marker):
    if marker == "compressed.json":  # a compressed variant's folder: replace's output marks it complete
        (tiny_checkpoint / "manifest.json").rename(tiny_checkpoint / marker)
    weights = tiny_checkpoint / "model.safetensors"
    size = weights.stat().st_size
    if damage == "deleted":
        weights.unlink()
        problem = "it holds no weight file"
    else:
        weights.write_bytes(weights.read_bytes()[: size // 2])
        problem = (
            f"model.safetensors is truncated or damaged ({size // 2} bytes; safetensors: incomplete metadata, "
            "file not fully covered)"
        )
    with pytest.raises(RuntimeError) as err:
        load_model(tiny_checkpoint)
    assert str(err.value) == (
        f"checkpoint {str(tiny_checkpoint)!r} is damaged: {problem}; "
        f"rebuild it: snakemake --forcerun {tiny_checkpoint / marker}"
    )


def test_damaged_checkpoint_is_named_before_any_job_runs(local_model, tmp_path):
    """Snakemake tracks only the marker file, so a dry run would say 'Nothing to be done'; it also warns."""
    import shutil

    folder = tmp_path / "results/models/tiny"
    shutil.copytree(local_model, folder)
    (folder / "provenance.json").write_text("{}")
    weights = folder / "model.safetensors"
    size = weights.stat().st_size
    weights.write_bytes(weights.read_bytes()[: size // 2])
    config = {"models": {"tiny": {"local": str(local_model)}}, **BASE}
    text, code = dry_run(tmp_path, config, "results/models/tiny/manifest.json")
    assert code == 0, text[-2000:]
    assert (
        f"warning: checkpoint 'results/models/tiny' is damaged: model.safetensors is truncated or damaged "
        f"({size // 2} bytes; safetensors: incomplete metadata, file not fully covered); "
        "rebuild it: snakemake --forcerun results/models/tiny/manifest.json"
    ) in text.splitlines()


# 3. shard folders of killed jobs --------------------------------------------------------------------------------
def test_stale_shard_folders_of_killed_jobs_are_removed(tmp_path):
    import socket

    from streamline.scratch import LEGACY_STALE_SECONDS, PREFIX, shard_scratch

    host = socket.gethostname()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    folders = {
        "killed": tmp_path / f"{PREFIX}{host}-{dead_pid}-abc123",
        "running": tmp_path / f"{PREFIX}{host}-{os.getppid()}-def456",
        "other_host": tmp_path / f"{PREFIX}elsewhere-{dead_pid}-ghi789",
        "legacy_old": tmp_path / f"{PREFIX}k2j4h5g6",
        "legacy_new": tmp_path / f"{PREFIX}q1w2e3r4",
    }
    for folder in folders.values():
        (folder / "train").mkdir(parents=True)
    old = time.time() - LEGACY_STALE_SECONDS - 60
    os.utime(folders["legacy_old"], (old, old))
    with shard_scratch(tmp_path) as scratch:
        assert scratch.name.startswith(f"{PREFIX}{host}-{os.getpid()}-") and scratch.is_dir()
        inside = scratch
    assert not inside.exists()
    left = {name for name, folder in folders.items() if folder.exists()}
    assert left == {"running", "other_host", "legacy_new"}


# 4. seq_len beyond the model's position range -------------------------------------------------------------------
def test_seq_len_beyond_max_positions_warns(local_model, tmp_path):
    config = {"models": {"tiny": {"local": str(local_model)}}, **BASE, "perplexity": {"seq_len": 512}}
    text, code = dry_run(tmp_path, config)
    assert code == 0
    warnings = [line for line in text.splitlines() if line.startswith("warning: ")]
    assert warnings == [
        "warning: perplexity.seq_len=512 exceeds the max_position_embeddings=256 of model 'tiny'; "
        "positions beyond it are extrapolated and its results are not comparable"
    ]


def test_seq_lens_checked_are_those_of_configured_jobs():
    config = {
        "calibration": {"seq_len": 1}, "perplexity": {"seq_len": 2}, "training": {"seq_len": 3},
        "search": {"seq_len": 4}, "healing": ["none"], "replacements": ["none"], "methods": ["streamline"],
    }
    assert config_seq_lens(config) == {"calibration.seq_len": 1, "perplexity.seq_len": 2}
    trains = {**config, "healing": ["replacement"], "replacements": ["ffn"], "methods": ["sleb"]}
    assert config_seq_lens(trains) == {
        "calibration.seq_len": 1, "perplexity.seq_len": 2, "training.seq_len": 3, "search.seq_len": 4
    }


# 5. many more samples than the text has windows -----------------------------------------------------------------
def test_samples_far_beyond_distinct_windows_warn(tokenizer, capsys):
    text = TEXT[:400]
    tokens = len(tokenizer(text, add_special_tokens=False).input_ids)
    distinct = tokens // 16
    sample_windows(tokenizer, text, 2 * distinct, 16, 0)
    assert capsys.readouterr().err == ""
    sample_windows(tokenizer, text, 500, 16, 0)
    assert capsys.readouterr().err == (
        f"warning: 500 samples of seq_len=16 asked from a text of {tokens} tokens, which holds only {distinct} "
        "distinct windows; the samples repeat the same text (use more text, fewer samples or a shorter seq_len)\n"
    )


# 6-10, 13-14. config checks before any job runs -----------------------------------------------------------------
def test_limit_for_unconfigured_task_is_refused(local_model, tmp_path):
    config = {
        "models": {"tiny": {"local": str(local_model)}},
        **BASE,
        "evaluation": {"tasks": ["piqa_mirror"], "limits": {"piqa": 5}},
    }
    assert config_error(tmp_path, config) == (
        "config error at evaluation.limits.piqa: 'piqa' names no task in evaluation.tasks (piqa_mirror)"
    )


@pytest.mark.parametrize(
    ("sparsities", "message"),
    [
        ([0.3, 0.3000001], "sparsities[1]: 0.3000001 and 0.3 both give the folder s0.3; "
                           "sparsities must differ within 6 significant digits"),
        ([1e-05], "sparsities[0]: 1e-05 has no exact folder name (s1e-05); "
                  "use a decimal of at most 6 significant digits, at least 0.0001"),
    ],
)
def test_sparsities_without_their_own_folder_are_refused(local_model, tmp_path, sparsities, message):
    config = {"models": {"tiny": {"local": str(local_model)}}, **BASE, "sparsities": sparsities}
    assert config_error(tmp_path, config) == f"config error at {message}"


def test_no_compressed_variant_is_refused(local_model, tmp_path):
    config = {
        "models": {"tiny": {"local": str(local_model)}},
        **BASE,
        "methods": ["shortgpt"],
        "healing": ["replacement"],
        "replacements": ["ffn"],
    }
    assert config_error(tmp_path, config) == (
        "config error at healing: no compressed variant is left (healing ffn dropped for shortgpt: "
        "it applies only to window methods (streamline, gromov, last-n, ppl-window))"
    )


def test_dropped_combinations_are_named(local_model, tmp_path):
    config = {
        "models": {"tiny": {"local": str(local_model)}},
        **BASE,
        "methods": ["shortgpt", "streamline", "random"],
        "healing": ["replacement", "lm-loss"],
        "replacements": ["none", "ffn"],
    }
    text, code = dry_run(tmp_path, config)
    assert code == 0, text[-2000:]
    assert [line for line in text.splitlines() if line.startswith("warning: ")] == [
        "warning: healing ffn, lm-loss dropped for shortgpt, random: they apply only to window methods "
        "(streamline, gromov, last-n, ppl-window)",
    ]


def test_user_configfile_models_replace_the_default(local_model, tmp_path):
    default = {"models": {"dflt": {"local": str(local_model)}}, **BASE}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(default))  # what the Snakefile's `configfile:` loads
    text, code = dry_run(tmp_path, {"models": {"mine": {"local": str(local_model)}}}, config_name="user.yaml")
    assert code == 0, text[-2000:]
    assert "models: the command line's models replace the default config's (dflt left out)" in text
    assert "model=mine" in text and "model=dflt" not in text and "results/models/dflt" not in text


def test_local_model_without_size_b_is_sized_from_its_checkpoint(local_model, tokenizer, tmp_path):
    params = sum(p.numel() for p in make_model(len(tokenizer), num_layers=8).parameters())
    assert checkpoint_parameters(local_model) == params
    config = {"models": {"tiny": {"local": str(local_model)}}, **BASE, "checkpoint_dtype": "float32"}
    text, code = dry_run(tmp_path, config, "results/models/tiny/manifest.json")
    assert code == 0, text[-2000:]
    mem_mb = math.ceil((params / 1e9 * 4 * 1.3 + 4) * 1024)  # heavy_mem_mb: 4 bytes per float32 parameter
    assert f"mem_mb={mem_mb}," in text and mem_mb < math.ceil((1.0 * 4 * 1.3 + 4) * 1024)


def test_unknown_training_dataset_names_its_key(local_model, tmp_path):
    config = {"models": {"tiny": {"local": str(local_model)}}, **BASE, "training": {"dataset": "c5"}}
    assert config_error(tmp_path, config) == (
        "config error at training.dataset: 'c5' is neither one of c4, tinystories, wiki, wikitext2 "
        "nor an existing text file"
    )


def test_model_entry_without_source_names_the_sources(tmp_path):
    config = {"models": {"big": {"size_b": 7}}, **BASE}
    assert config_error(tmp_path, config) == (
        "config error at models.big: give exactly one of hf, local, gguf (got only size_b)"
    )


# 11-13. messages that name the file and the line ----------------------------------------------------------------
def test_malformed_perplexity_jsonl_names_file_and_line(tmp_path):
    path = tmp_path / "wikitext-2-raw" / "test.jsonl"
    path.parent.mkdir()
    path.write_text('{"text": "fine"}\n\n{"text": "a\tb"}\n')
    with pytest.raises(ValueError) as err:
        perplexity_text("wikitext2", tmp_path)
    assert str(err.value) == f"{str(path)!r} line 3: invalid JSON (Invalid control character at column 12)"


def test_malformed_mirror_task_jsonl_names_file_and_line(tmp_path):
    from streamline.evaluation.harness import PROJECT_TASKS

    sys.path.insert(0, str(PROJECT_TASKS))
    import mirror_data

    (tmp_path / "bad.jsonl").write_text('{"goal": "x", "label": 0}\n{"goal": "x", "label": }\n')
    with pytest.raises(ValueError) as err:
        mirror_data.load("bad.jsonl", data_mirror=str(tmp_path))
    assert str(err.value) == f"{str(tmp_path / 'bad.jsonl')!r} line 2: invalid JSON (Expecting value at column 24)"


def test_task_yaml_syntax_error_is_reported_with_file_and_line(tmp_path):
    from streamline.evaluation.harness import check_tasks, task_manager

    (tmp_path / "my_task.yaml").write_text("task: my_task\ndataset_path: json\n  output_type: multiple_choice\n")
    manager = task_manager([tmp_path], MIRROR)
    with pytest.raises(ValueError) as err:
        check_tasks(manager, ["piqa_mirror", "my_task"])
    assert str(err.value) == (
        f"evaluation task 'my_task' is unknown: task file {str(tmp_path / 'my_task.yaml')!r} does not parse: "
        "line 3, column 14: mapping values are not allowed here"
    )


def test_binary_calibration_file_is_named(tmp_path):
    path = tmp_path / "calib.bin"
    path.write_bytes(b"text\x89PNG\x00\x01")
    with pytest.raises(ValueError) as err:
        calibration_text(str(path), None)
    assert str(err.value) == (
        f"text file {str(path)!r} is not UTF-8 text (byte 0x89 at offset 4); give a plain text file"
    )
