"""Named experiments (README, "Experiments"): work keyed by its settings is shared between experiments and never
overwritten; switching experiments re-runs nothing; adding a branch runs only it (issue 14, items 1 and 4).

Most tests record a config's jobs as done without running them (`fake_run`: their outputs are created empty
and `snakemake --touch --force` on them stores their params and times), which is what Snakemake's re-run decisions
read; one test runs two tiny experiments for real."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import (
    TINY_RUN,
    dag_paths,
    dry_run_outputs,
    experiment_dir,
    make_model,
    make_tokenizer,
    project_copy,
    save_tiny_checkpoint,
    snakemake_cmd,
    variant_dir,
)

slow = pytest.mark.slow  # the tests that run Snakemake

BASE = {
    **TINY_RUN,
    "importance": {"metrics": ["cosine"]},
    "sparsities": [0.3],
    "methods": ["streamline"],
    "replacements": ["none", "linear"],
    "training": {"samples": 8, "val_samples": 4, "seq_len": 32, "epochs": 1, "batch_size": 4, "shard_sequences": 4},
    "evaluation": {"tasks": ["piqa_mirror"], "limit": 4, "batch_size": 4},
}
# An overlay like configs/comparison.yaml: its own name, other training settings and a second training budget.
OVERLAY = {"experiment": "cmp", "training": {"epochs": 2, "scales": [1, 2]}}
PLOTS = {"plot": 5, "plot_importance": 1}
EVAL = ("accuracy", "perplexity", "model_stats", "stability")
SUMMARIES = {"aggregate": 1, "paired": 1, "tables": 1, "current_tables": 1}  # the experiment's tables and their results/tables/ copy


def per_variant(n: int, *, prune: bool = True) -> dict[str, int]:
    """The jobs of n new variants: (prune,) replace and the four evaluation steps."""
    return {**({"prune": n, "replace": n} if prune else {}), **{step: n for step in EVAL}}


def snakemake(workdir: Path, configs: list[dict], *args: str) -> subprocess.CompletedProcess:
    """Run the workflow with the config files `configs` (later ones override earlier ones, as --configfile does)."""
    paths = []
    for i, config in enumerate(configs):
        paths.append(workdir / f"config{i}.yaml")
        paths[-1].write_text(yaml.safe_dump(config))
    cmd = snakemake_cmd(workdir, paths[0], *map(str, paths[1:]), "--cores", "2", *args)
    return subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=900)


def job_stats(text: str) -> dict[str, int]:
    """Rule -> job count of a dry run's output ({} when there is nothing to do)."""
    if "Nothing to be done" in text:
        return {}
    jobs = {}
    for line in text.split("Job stats:")[1].split("total")[0].splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            jobs[parts[0]] = int(parts[1])
    return jobs


def jobs_of(workdir: Path, configs: list[dict], *targets: str) -> dict[str, int]:
    """Rule -> job count of a dry run of `configs`."""
    result = snakemake(workdir, configs, "-n", *targets)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    return job_stats(result.stdout + result.stderr)


def fake_run(workdir: Path, configs: list[dict]) -> dict[str, int]:
    """Record the jobs a run of `configs` would do as done, without running them; returns their counts."""
    result = snakemake(workdir, configs, "-n")
    text = result.stdout + result.stderr
    assert result.returncode == 0, text[-3000:]
    outputs = dry_run_outputs(text)
    for name in outputs:
        path = workdir / name
        if path.name == "samples":  # accuracy's directory output
            path.mkdir(parents=True, exist_ok=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("{}")
    touched = snakemake(workdir, configs, "--touch", "--force", *outputs)  # exactly these jobs: metadata, times
    assert touched.returncode == 0, touched.stderr[-3000:]
    return job_stats(text)


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("source") / "tiny-src"
    tokenizer = make_tokenizer()
    return save_tiny_checkpoint(make_model(len(tokenizer), num_layers=8), tokenizer, folder)


@pytest.fixture(scope="module")
def default(source) -> dict:
    return {"models": {"tiny": {"local": str(source)}}, **BASE}


@pytest.fixture(scope="module")
def recorded(default, tmp_path_factory) -> Path:
    """A workdir where the default config's jobs are recorded as done (the change tests only dry-run in it)."""
    workdir = tmp_path_factory.mktemp("recorded")
    fake_run(workdir, [default])
    return workdir


@slow
def test_experiments_share_untrained_work_and_key_trained_variants(default, tmp_path):
    """Two experiments that differ only in training settings: the same importance, dense and `none` paths in the
    DAG; the trained variants get other keys (and the second budget its own); the summaries never meet."""
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(default))
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(OVERLAY))
    cmd_b = [str(tmp_path / "a.yaml"), str(tmp_path / "b.yaml")]
    shared = [
        "results/importance/*",
        "results/compressed/tiny/streamline-none/*",
        "results/eval/tiny/dense/*",
        "results/eval/tiny/streamline-none/*",
    ]
    a = dag_paths(tmp_path, tmp_path / "a.yaml", *shared)
    b = dag_paths(tmp_path, Path(cmd_b[0]), *shared, configs=cmd_b[1:])
    # similarity (pairs, provenance) + cosine (csv, png); plan, checkpoint marker, curve, provenance; 6 eval files twice
    assert a == b and len(a) == 4 + 4 + 6 + 6
    trained = "results/compressed/tiny/streamline-linear/s0.3/*/compressed.json"
    [key_a] = [Path(p).parent.name for p in dag_paths(tmp_path, tmp_path / "a.yaml", trained)]
    keys_b = [Path(p).parent.name for p in dag_paths(tmp_path, Path(cmd_b[0]), trained, configs=cmd_b[1:])]
    assert len(keys_b) == 2 and key_a not in keys_b  # scales 1 and 2, both trained for 2 epochs
    tables = "results/experiments/*/tables/all.csv"
    assert dag_paths(tmp_path, tmp_path / "a.yaml", tables) == ["results/experiments/default/tables/all.csv"]
    assert dag_paths(tmp_path, Path(cmd_b[0]), tables, configs=cmd_b[1:]) == ["results/experiments/cmp/tables/all.csv"]


@slow
def test_switching_experiments_reruns_nothing(default, tmp_path):
    """default, then default + overlay, then default again: the overlay runs only its own variants and summaries,
    and afterwards neither experiment has anything to do."""
    assert fake_run(tmp_path, [default])["replace"] == 2
    before = (tmp_path / "results/experiments/default/tables/all.csv").stat().st_mtime_ns
    second = fake_run(tmp_path, [default, OVERLAY])
    # two linear variants (budgets 1 and 2 at 2 epochs); importance, dense and none are reused
    assert second == {**per_variant(2), **SUMMARIES, **PLOTS, "all": 1}
    # switching back copies the default's tables to results/tables/ again, nothing else
    assert jobs_of(tmp_path, [default]) == {"current_tables": 1, "all": 1}
    fake_run(tmp_path, [default])
    assert jobs_of(tmp_path, [default]) == {}
    assert (tmp_path / "results/experiments/default/tables/all.csv").stat().st_mtime_ns == before


@slow
@pytest.mark.parametrize(
    "change,expected",
    [
        ({"sparsities": [0.3, 0.4]}, {**per_variant(2), "plot_importance": 1}),
        ({"methods": ["streamline", "last-n"]}, {**per_variant(2), "plot_importance": 1}),
        (
            {"models": "two"},
            {"acquire_model": 1, "similarity": 1, "importance": 1, **per_variant(2), "plot_importance": 1,
             **{step: 3 for step in EVAL}},
        ),
        ({"training": {**BASE["training"], "scales": [1, 2]}}, {**per_variant(1), "plot_importance": 1}),
        ({"plots": {"dpi": 90}}, {"plot_importance": 1}),
        # an ablation adds its variants at its own targets only: ffn at 2x tokens (none at s0.3 exists already),
        # then plain removal at a new sparsity without the top level's replacements there
        (
            {"ablations": [{"replacements": ["none", "ffn"], "scales": [2]}, {"sparsities": [0.5], "healing": ["none"]}]},
            {**per_variant(2), "plot_importance": 1},
        ),
    ],
    ids=["sparsity", "method", "model", "training-scale", "plot-style", "ablations"],
)
def test_a_change_runs_only_its_branch(default, recorded, change, expected):
    """After a (recorded) run, each change adds only its own jobs, then the experiment's summaries; restyling
    the figures re-runs only the figure rules."""
    if change.get("models") == "two":
        change = {"models": {**default["models"], "tiny2": default["models"]["tiny"]}}
    summaries = SUMMARIES if "plots" not in change else {}
    assert jobs_of(recorded, [{**default, **change}]) == {**summaries, **PLOTS, **expected, "all": 1}


@slow
def test_a_folder_of_other_settings_is_refused(default, tmp_path):
    """A path whose key is not the key of this config's settings stops with one line instead of filling it."""
    plan = "results/compressed/tiny/streamline-none/s0.3/00000000/plan.json"
    result = snakemake(tmp_path, [default], "-n", plan)
    assert result.returncode != 0
    text = result.stdout + result.stderr
    assert "variant tiny/streamline-none/s0.3/00000000 is not one of this config's variants" in text
    ppl = "results/eval/tiny/dense/perplexity-00000000/ppl.json"
    result = snakemake(tmp_path, [default], "-n", ppl)
    assert result.returncode != 0
    text = result.stdout + result.stderr
    assert "perplexity[tiny/dense]: the folder key 00000000 is not the key of this config's settings" in text


@slow
def test_a_scale_without_whole_samples_is_refused(default, tmp_path):
    config = {**default, "training": {**BASE["training"], "scales": [1, 0.3]}}
    result = snakemake(tmp_path, [config], "-n")
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if "config error" in line]
    assert lines == [
        (
            "config error at training.scales[1]: 0.3 x training.samples 8 = 2.4 sequences; a scale must give a "
            "whole number of at least 1"
        )
    ]


def users_command(project: Path, *args: str) -> subprocess.CompletedProcess:
    """The design card's command, `snakemake --cores 8 results/tables/all.csv`, run in `project` (plus `args`)."""
    cmd = [str(Path(sys.executable).parent / "snakemake"), "--cores", "8", "results/tables/all.csv", *args]
    return subprocess.run(cmd, cwd=project, check=False, capture_output=True, text=True, timeout=900)


@slow
def test_two_real_experiments_keep_their_results(default, tmp_path):
    """The users' command on a real run of the default, then of the overlay (--configfile), then the default
    again: results/tables/all.csv holds the last config's rows each time, switching re-runs no keyed work, both
    experiments' tables stay intact, each listing exactly its own variants, the budgets trained on 1x and 2x."""
    project = project_copy(tmp_path, default)
    (project / "overlay.yaml").write_text(yaml.safe_dump(OVERLAY))
    current = project / "results/tables/all.csv"
    table = "results/experiments/{}/tables/all.csv"
    first = users_command(project)
    assert first.returncode == 0, first.stderr[-4000:]
    a = pd.read_csv(project / table.format("default"))
    pd.testing.assert_frame_equal(pd.read_csv(current), a)
    second = users_command(project, "--configfile", "overlay.yaml")
    assert second.returncode == 0, second.stderr[-4000:]
    assert "rule similarity" not in second.stdout + second.stderr  # the importance was reused
    b = pd.read_csv(project / table.format("cmp"))
    pd.testing.assert_frame_equal(pd.read_csv(current), b)
    back = users_command(project)  # only the copy re-runs: its input files are the default's again
    assert back.returncode == 0, back.stderr[-4000:]
    assert job_stats(back.stdout + back.stderr) == {"current_tables": 1}
    pd.testing.assert_frame_equal(pd.read_csv(current), a)
    pd.testing.assert_frame_equal(pd.read_csv(project / table.format("default")), a)
    assert "Nothing to be done" in users_command(project, "-n").stdout
    assert set(a["experiment"]) == {"default"} and set(b["experiment"]) == {"cmp"}
    shape = ["method", "healing", "variant_key", "training_scale", "training_tokens"]
    empty = {"variant_key": "", "training_scale": 0}  # dense has no key; nothing trains in dense and none
    rows_a = a[shape].drop_duplicates().fillna(empty).values.tolist()
    rows_b = b[shape].drop_duplicates().fillna(empty).values.tolist()
    none = [r for r in rows_a if r[1] == "none"]
    assert none == [r for r in rows_b if r[1] == "none"]  # dense and streamline-none: the same folders
    assert [r[3:] for r in rows_a if r[1] == "linear"] == [[1, 8 * 32]]
    assert sorted(r[3:] for r in rows_b if r[1] == "linear") == [[1, 8 * 32], [2, 16 * 32]]
    # no folder was overwritten: the default's linear variant is still the one its table names
    linear_a = next(r[2] for r in rows_a if r[1] == "linear")
    folder = project / "results/compressed/tiny/streamline-linear/s0.3"
    record = json.loads((folder / linear_a / "settings.json").read_text())
    assert record["settings"]["replace"]["training"]["epochs"] == 1
    assert len(list(folder.iterdir())) == 3
    assert variant_dir(project, "tiny", "streamline-none/s0.3").is_dir()
    assert experiment_dir(project, "cmp").is_dir()


def test_settings_key_is_the_sha256_of_the_canonical_json():
    from streamline.provenance import settings_key

    settings = {"training": {"samples": 128, "lr": 0.0002}, "plugins": [], "scores": None}
    canonical = '{"plugins":[],"scores":null,"training":{"lr":0.0002,"samples":128}}'
    assert settings_key(settings) == hashlib.sha256(canonical.encode()).hexdigest()[:8]
    reordered = {"scores": None, "plugins": [], "training": {"lr": 0.0002, "samples": 128}}
    assert settings_key(reordered) == settings_key(settings)  # key order is not a setting
    assert settings_key({**settings, "training": {"samples": 64, "lr": 0.0002}}) != settings_key(settings)


def test_all_csv_lists_exactly_the_given_variants_with_their_key_and_budget(tmp_path):
    """build_all_table reads the experiment's variants from its list (never a folder scan): a variant folder of
    another experiment beside them stays out; the key, scale and training tokens come through per variant."""
    from streamline.atomic import write_json
    from streamline.reporting.collect import build_all_table

    def files(folder: Path, acc: float, ppl: float) -> dict[str, str]:
        accuracy = {"piqa": {"metrics": {"acc": {"value": acc, "stderr": 0.1}}, "n_examples": 4}}
        write_json(folder / "accuracy.json", accuracy)
        write_json(folder / "ppl.json", {"dataset": "wikitext2", "perplexity": ppl, "windows": 2})
        stats = {"prefill_tok_s": 1.0, "decode_tok_s": 1.0, "checkpoint_bytes": 10, "num_layers": 6, "dtype": "float32"}
        write_json(folder / "model_stats.json", stats)
        write_json(folder / "stability.json", {"piqa": {"stability": 1.0, "n_examples": 4}})
        names = {"accuracy": "accuracy.json", "perplexity": "ppl.json", "model_stats": "model_stats.json"}
        return {**{k: str(folder / v) for k, v in names.items()}, "stability": str(folder / "stability.json")}

    def compressed(folder: Path, windows: int) -> str:
        plan = {"method": "streamline", "healing": "linear", "target_sparsity": 0.3, "target_layers": None,
                "actual_sparsity": 0.31, "sparsity_of": "layers", "num_layers_removed": 2, "removed_layers": [3, 4],
                "params_after": 900}
        split = {"train_windows": windows, "seq_len": 32}
        write_json(folder / "compressed.json", {"plan": plan, "training": {"tokens_seen": 2 * windows * 32},
                                                "data_split": split})
        return str(folder / "compressed.json")

    write_json(tmp_path / "models/tiny/manifest.json", {"parameters": 1000})
    entries = [{"model": "tiny", "variant": "dense", "variant_key": "", "training_scale": None, "compressed": None,
                **files(tmp_path / "dense", 0.5, 10.0)}]
    for key, scale in (("aaaaaaaa", 1), ("bbbbbbbb", 2)):
        folder = tmp_path / key
        entries.append({"model": "tiny", "variant": f"streamline-linear/s0.3/{key}", "variant_key": key,
                        "training_scale": scale, "compressed": compressed(folder, 8 * scale),
                        **files(folder, 0.4 + 0.01 * scale, 20.0)})
    compressed(tmp_path / "cccccccc", 64)  # another experiment's variant: not in the list, not in the table
    table = build_all_table(entries, [str(tmp_path / "models/tiny/manifest.json")], tmp_path / "all.csv", "h", 0, "x")
    assert set(table["experiment"]) == {"x"} and set(table["variant_key"].fillna("")) == {"", "aaaaaaaa", "bbbbbbbb"}
    acc = table[table["metric"] == "acc"].set_index("variant_key")
    assert acc["value"].tolist() == pytest.approx([0.5, 0.41, 0.42])
    assert acc["training_tokens"].tolist() == [0, 8 * 32, 16 * 32]  # windows x seq_len; 0 for dense
    assert acc["training_scale"].tolist()[1:] == [1, 2] and pd.isna(acc["training_scale"].iloc[0])
    tokens = table[table["metric"] == "train_tokens"]["value"].tolist()
    assert tokens == [2 * 8 * 32, 2 * 16 * 32]  # the metric counts every epoch (2 here)
