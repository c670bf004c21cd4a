"""Issue 27 (Reliability 3), items 3, 4 and 6, in the workflow: every file a job reads re-runs exactly the jobs that
read it when it changes (a test per kind), a plugin edited between two runs gives its variants new folders, bad
plugins and names stop with one line, and keyed folders a user damaged or deleted are named or rebuilt.

The jobs are recorded as done without running them (`fake_run` of tests/test_experiments.py: Snakemake's re-run
decisions read only its records and file times). Design per kind (docs/reliability.md, "No stale result"):
- a plugin's code is in the settings key of the jobs that import it (its sha256): an edit gives new folders;
- data read by path (calibration/training text files, the data mirror's corpora and mirror task data), task files
  and local model files are inputs of their jobs: Snakemake compares modification times;
- scratch folders (training.scratch_dir, the pair cache) hold nothing a result depends on: not inputs.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest
from conftest import TINY_RUN, dry_run_outputs, make_model, make_tokenizer, save_tiny_checkpoint
from test_experiments import EVAL, PLOTS, SUMMARIES, fake_run, job_stats, jobs_of, snakemake

pytestmark = pytest.mark.slow  # Snakemake dry runs

LOWEST_COSINE = '''
from streamline.pruning.criteria import Criterion, register


def lowest_cosine(table, num_layers, settings):
    return table.assign(score=-table["score"])


register(Criterion("lowest-cosine", "window", lowest_cosine, metric="cosine"))
'''
MIRROR_FILES = {  # the files of the data mirror this config's jobs read (contents are never read by a dry run)
    "training": "wikitext-2-raw/wikitext2_train_5k.txt",
    "perplexity": "wikitext-2-raw/test.jsonl",
    "task": "piqa/valid_with_labels.jsonl",
}


def per_variant(n: int, steps=EVAL) -> dict[str, int]:
    return {step: n for step in steps}


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """A workdir whose config's jobs are recorded as done: two methods (one a plugin) x none/linear, a calibration
    text file and a data mirror of its own."""
    workdir = tmp_path_factory.mktemp("inputs3")
    tokenizer = make_tokenizer()
    save_tiny_checkpoint(make_model(len(tokenizer), num_layers=8), tokenizer, workdir / "tiny-src")
    mirror = workdir / "mirror"
    for name in MIRROR_FILES.values():
        (mirror / name).parent.mkdir(parents=True, exist_ok=True)
        (mirror / name).write_text("{}\n")
    (workdir / "calib.txt").write_text("calibration text\n")
    (workdir / "lowest_cosine.py").write_text(LOWEST_COSINE)
    config = {
        "models": {"tiny": {"local": str(workdir / "tiny-src")}},
        **TINY_RUN,
        "data_mirror": str(mirror),
        "calibration": {**TINY_RUN["calibration"], "dataset": "calib.txt"},
        "importance": {"metrics": ["cosine"]},
        "methods": ["streamline", "lowest-cosine"],
        "replacements": ["none", "linear"],
        "plugins": ["lowest_cosine.py"],
        "training": {"samples": 8, "val_samples": 4, "seq_len": 32, "epochs": 1, "batch_size": 4},
        "evaluation": {"tasks": ["piqa_mirror"], "limit": 4, "batch_size": 4},
    }
    fake_run(workdir, [config])
    assert jobs_of(workdir, [config]) == {}
    return workdir, config


def edited(path: Path) -> tuple[bytes, float]:
    """Edit `path` (one more byte) with a modification time after every output, as an editor would; returns its
    bytes and time to put back. (Snakemake compares small inputs by checksum: a new time alone re-runs nothing.)"""
    before = path.read_bytes(), path.stat().st_mtime
    path.write_bytes(before[0] + b"\n")
    os.utime(path, (time.time() + 120, time.time() + 120))
    return before


def restore(path: Path, before: tuple[bytes, float]) -> None:
    path.write_bytes(before[0])
    os.utime(path, (before[1], before[1]))


ALL = {**SUMMARIES, **PLOTS, "all": 1}  # the experiment's summaries follow every change
ALL_BUT_IMPORTANCE_PLOT = {k: v for k, v in ALL.items() if k != "plot_importance"}


@pytest.mark.parametrize(
    ("changed", "expected"),
    [
        # calibration text: similarity and everything made from it (both methods' plans read the cosine table)
        ("calib.txt", {"similarity": 1, "importance": 1, "prune": 4, "replace": 4, **per_variant(4), **ALL}),
        # training text (a mirror corpus): the two trained (linear) variants only
        (f"mirror/{MIRROR_FILES['training']}", {"replace": 2, **per_variant(2), **ALL_BUT_IMPORTANCE_PLOT}),
        # perplexity text: every model's perplexity (dense and 4 variants), nothing else
        (f"mirror/{MIRROR_FILES['perplexity']}", {"perplexity": 5, **ALL_BUT_IMPORTANCE_PLOT}),
        # a mirror task's data: accuracy of every model, and the stability that compares it
        (f"mirror/{MIRROR_FILES['task']}", {"accuracy": 5, "stability": 5, **ALL_BUT_IMPORTANCE_PLOT}),
        # the local model's weights: all of it (the existing test_reliability_inputs covers the message)
        ("tiny-src/model.safetensors",
         {"acquire_model": 1, "similarity": 1, "importance": 1, "prune": 4, "replace": 4, **per_variant(5),
          **ALL}),
    ],
    ids=["calibration-text", "training-mirror", "perplexity-mirror", "task-data-mirror", "local-model"],
)
def test_a_changed_file_reruns_exactly_the_jobs_that_read_it(recorded, changed, expected):
    workdir, config = recorded
    path = workdir / changed
    before = edited(path)
    try:
        jobs = jobs_of(workdir, [config])
    finally:
        restore(path, before)
    assert jobs == expected
    assert jobs_of(workdir, [config]) == {}


def test_a_plugin_edited_between_two_runs_gives_its_variants_new_folders(recorded):
    """Its code is in the key of the plans it makes: the edit re-runs the plugin's two variants (new folders; the
    old ones stay, as for any other changed setting) and nothing of the built-in method."""
    workdir, config = recorded
    plugin = workdir / "lowest_cosine.py"
    before = plugin.read_text()
    plugin.write_text(before.replace('-table["score"]', '-1.0 * table["score"]'))
    try:
        result = snakemake(workdir, [config], "-n")
    finally:
        plugin.write_text(before)
    text = result.stdout + result.stderr
    assert result.returncode == 0, text[-2000:]
    assert job_stats(text) == {"prune": 2, "replace": 2, **per_variant(2), **ALL}
    plans = [p for p in dry_run_outputs(text) if p.endswith("/plan.json")]
    assert sorted(p.split("/")[3] for p in plans) == ["lowest-cosine-linear", "lowest-cosine-none"]
    assert not any((workdir / p).exists() for p in plans)  # new folders: the old code's results stay in theirs
    assert jobs_of(workdir, [config]) == {}  # the same code again: nothing to do


def test_a_plugin_that_does_not_parse_stops_the_dag_with_one_line(recorded, tmp_path):
    _, config = recorded
    (tmp_path / "broken.py").write_text("def f(:\n")
    result = snakemake(tmp_path, [{**config, "plugins": [str(tmp_path / "broken.py")]}], "-n")
    assert result.returncode != 0
    assert (
        f"config error at plugins: plugin {str(tmp_path / 'broken.py')!r} does not parse: {tmp_path / 'broken.py'} "
        "line 1: invalid syntax"
    ) in result.stderr.splitlines()
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"experiment": "x" * 300},
         "config error at experiment: 'xxxxxxxxxxxxxxxxxxxxxxxx'... has 300 characters; at most 64 allowed"),
        ({"ablations": [{"sparsities": []}]},
         "config error at ablations[0]: no target: sparsities and prune_layers are both empty; name at least one"),
        ({"ablations": [{"methods": ["shortgpt"], "healing": ["replacement"], "replacements": ["linear"]}]},
         ("config error at ablations[0]: no compressed variant is left (healing linear dropped for shortgpt: it "
          "applies only to window methods (streamline, gromov, last-n, ppl-window, lowest-cosine))")),
    ],
    ids=["long-experiment", "ablation-without-target", "ablation-without-variant"],
)
def test_bad_names_and_empty_ablations_stop_with_one_line(recorded, tmp_path, change, message):
    workdir, config = recorded
    result = snakemake(tmp_path, [{**config, "plugins": [str(workdir / "lowest_cosine.py")], **change}], "-n")
    assert result.returncode != 0
    assert [line for line in result.stderr.splitlines() if "config error" in line] == [message]
    assert "Traceback" not in result.stderr


def test_an_edited_settings_record_is_named_before_any_job(recorded):
    """The record a job writes (fake_run runs no job, so it is written here as the perplexity job writes it)."""
    import copy

    from streamline.provenance import write_settings
    from streamline.workflow.config_schema import validate
    from streamline.workflow.variants import Experiment

    workdir, config = recorded
    plain = copy.deepcopy({**config, "methods": ["streamline"], "plugins": []})  # the same evaluation settings
    validate(plain)
    experiment = Experiment(plain)
    folder = experiment.eval_dir("tiny", "dense", "perplexity")
    record = write_settings(workdir / folder, experiment.eval_settings("perplexity"))
    before = record.read_text()
    record.write_text(before.replace('"max_windows": 2', '"max_windows": 20'))
    try:
        result = snakemake(workdir, [config], "-n")
    finally:
        record.unlink()
    assert result.returncode == 0
    warnings = [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("warning: ")]
    assert [w for w in warnings if "settings.json" in w] == [(
        f"warning: {folder}/settings.json records other settings than the ones the folder's key stands for: edited "
        "by hand or damaged; the folder's results are those of the settings its key hashes (the record only "
        f"documents them); to rewrite it: snakemake --forcerun {folder}/ppl.json (re-runs that job and what depends "
        "on it)"
    )]


def test_a_deleted_keyed_folder_is_named_and_rebuilt_on_demand(recorded, tmp_path):
    """Snakemake rebuilds a missing file only when a job that must run needs it: a deleted variant folder whose
    evaluations are still there is named, and the command the warning gives rebuilds it and what was made from it
    (and nothing else)."""
    workdir, config = recorded
    copy = tmp_path / "copy"
    shutil.copytree(workdir, copy, symlinks=True)  # keeps file times and Snakemake's records
    [variant] = (copy / "results/compressed/tiny/streamline-linear/s0.3").iterdir()
    shutil.rmtree(variant)  # the config still names the original's model and mirror: the same keys
    folder = str(variant.relative_to(copy))
    result = snakemake(copy, [config], "-n")
    text = result.stdout + result.stderr
    assert result.returncode == 0 and "Nothing to be done" in text, text[-2000:]
    eval_dir = next(line for line in text.splitlines() if "keyed folder" in line).split(" but ")[1].split(" was ")[0]
    assert eval_dir.startswith(f"results/eval/tiny/{folder.removeprefix('results/compressed/tiny/')}/")
    assert [line for line in text.splitlines() if "keyed folder" in line] == [(
        f"warning: keyed folder {folder} is missing (deleted?) but {eval_dir} was made from it; both stay as they are "
        f"until a job needs it; to rebuild it and re-run what was made from it: snakemake --forcerun {folder}/plan.json"
    )]
    rebuild = jobs_of(copy, [config], "--forcerun", f"{folder}/plan.json")
    assert rebuild == {"prune": 1, "replace": 1, **per_variant(1), **ALL}
