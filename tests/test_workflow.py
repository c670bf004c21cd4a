"""The real Snakemake DAG on a tiny model and tiny data, in a temporary folder."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import (
    TINY_RUN,
    dag_paths,
    eval_dir,
    experiment_dir,
    importance_dir,
    make_model,
    make_tokenizer,
    order_file,
    save_tiny_checkpoint,
    snakemake_cmd,
    variant_dir,
)

pytestmark = pytest.mark.slow

TINY_CONFIG = {
    **TINY_RUN,
    "methods": ["streamline"],
    "replacements": ["none", "linear", "swiglu"],
    "training": {
        "samples": 8,
        "val_samples": 4,
        "seq_len": 32,
        "epochs": 2,
        "batch_size": 4,
        "lr": 0.003,
        "shard_sequences": 4,
    },
    "evaluation": {
        "tasks": ["piqa_mirror", "winogrande_mirror", "lambada_openai_mirror"],
        "limit": 6,
        "limits": {"winogrande_mirror": 4},
        "batch_size": 4,
    },
    "perplexity": {"seq_len": 64, "max_windows": 3, "batch_size": 2},
}


def snakemake(workdir: Path, *args: str, config: dict | None = None) -> subprocess.CompletedProcess:
    config_path = workdir / "config.yaml"
    if config is not None:
        config_path.write_text(yaml.safe_dump(config))
    cmd = snakemake_cmd(workdir, config_path, "--cores", "2", *args)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def tiny_workflow(tmp_path_factory):
    """Run the whole DAG once; the tests below inspect its outputs."""
    workdir = tmp_path_factory.mktemp("wf")
    tokenizer = make_tokenizer()
    save_tiny_checkpoint(make_model(len(tokenizer), num_layers=8), tokenizer, workdir / "tiny-src")
    config = {"models": {"tiny": {"local": str(workdir / "tiny-src")}}, **TINY_CONFIG}
    result = snakemake(workdir, config=config)  # the default target: all.csv, tables and plots
    assert result.returncode == 0, result.stderr[-4000:]
    return workdir, config


def dry_run_jobs(workdir: Path, config: dict, *targets: str) -> dict[str, int]:
    """Rule -> job count of a dry run of `targets` (default: the default target), from its 'Job stats' table."""
    result = snakemake(workdir, "-n", *targets, config=config)
    assert result.returncode == 0, result.stderr[-3000:]
    text = result.stdout + result.stderr
    if "Nothing to be done" in text:
        return {}
    stats = text.split("Job stats:")[1].split("total")[0]
    jobs = {}
    for line in stats.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            jobs[parts[0]] = int(parts[1])
    return jobs


def test_all_csv_schema_and_dense_row(tiny_workflow):
    workdir, _ = tiny_workflow
    table = pd.read_csv(experiment_dir(workdir) / "tables/all.csv")
    from streamline.reporting.collect import COLUMNS

    assert list(table.columns) == COLUMNS
    assert set(table["method"]) == {"dense", "streamline"}
    assert set(table["healing"]) == {"none", "linear", "swiglu"}
    dense = table[table["method"] == "dense"]
    assert (dense["target_sparsity"] == 0).all()
    stab = dense[dense["metric"] == "stability"]
    assert set(stab["task"]) == {"piqa_mirror", "winogrande_mirror"}  # lambada is not multiple choice
    assert stab["value"].tolist() == pytest.approx([1.0, 1.0])
    assert dense[dense["metric"] == "prediction_agreement"]["value"].tolist() == [1.0, 1.0]
    n = table[(table["metric"] == "acc")].set_index(["healing", "task", "method"])["n_examples"]
    assert n.xs("winogrande_mirror", level="task").eq(4).all() and n.xs("piqa_mirror", level="task").eq(6).all()
    assert set(table["experiment"]) == {"default"}
    per_variant = table[table["method"] == "streamline"].drop_duplicates("healing").set_index("healing")
    # training windows x seq_len: 8 x 32 tokens for the kinds that train, 0 for none and dense
    assert per_variant["training_tokens"].to_dict() == {"none": 0, "linear": 256, "swiglu": 256}
    assert (dense["training_tokens"] == 0).all()
    assert per_variant["training_scale"].fillna(0).to_dict() == {"none": 0, "linear": 1, "swiglu": 1}  # empty: none
    assert dense["variant_key"].isna().all() and per_variant["variant_key"].str.fullmatch("[0-9a-f]{8}").all()


def test_compressed_outputs(tiny_workflow):
    workdir, _ = tiny_workflow
    from streamline.acquisition.models import load_model
    from streamline.provenance import settings_key

    for kind in ("none", "linear", "swiglu"):
        folder = variant_dir(workdir, "tiny", f"streamline-{kind}/s0.3")
        plan = json.loads((folder / "plan.json").read_text())
        assert plan["actual_sparsity"] >= 0.3 and plan["method"] == "streamline"
        model, _ = load_model(folder)
        layers = 8 - plan["num_layers_removed"] + (1 if kind == "swiglu" else 0)
        assert model.config.num_hidden_layers == layers == len(model.model.layers)
        assert (folder / "provenance.json").is_file()
        settings = json.loads((folder / "settings.json").read_text())  # the key is the hash of the settings
        assert settings["key"] == folder.name == settings_key(settings["settings"])
        assert settings["settings"]["variant"] == f"streamline-{kind}/s0.3"
        curve = pd.read_csv(folder / "train_log.csv")
        assert len(curve) == (0 if kind == "none" else 3)
    ppl = json.loads((eval_dir(workdir, "tiny", "dense", "perplexity") / "ppl.json").read_text())
    assert ppl["windows"] == 3 and ppl["perplexity"] > 1
    for folder in (
        workdir / "results/models/tiny",
        importance_dir(workdir, "tiny"),
        variant_dir(workdir, "tiny", "streamline-swiglu/s0.3"),
        eval_dir(workdir, "tiny", "dense", "accuracy"),
        experiment_dir(workdir) / "tables",
    ):
        record = json.loads((folder / "provenance.json").read_text())
        assert {"config_hash", "packages", "git_commit", "seed", "device", "started", "finished"} <= set(record)
        assert record["packages"]["torch"].startswith("2.")
    table = pd.read_csv(experiment_dir(workdir) / "tables/all.csv")
    assert table["config_hash"].nunique() == 1
    heat = importance_dir(workdir, "tiny") / "cosine.png"
    assert heat.stat().st_size > 1000
    scores = pd.read_csv(importance_dir(workdir, "tiny") / "cosine.csv")
    assert len(scores) == sum(range(2, 9))


def test_bad_sparsity_fails_before_any_job(tmp_path):
    config = {"models": {"tiny": {"local": str(tmp_path)}}, **TINY_CONFIG, "sparsities": [1.5]}
    result = snakemake(tmp_path, "-n", "results/experiments/default/tables/all.csv", config=config)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if "config error" in line]
    assert lines == ["config error at sparsities[0]: 1.5 is greater than or equal to the maximum of 1"]


def test_unknown_replacement_is_named(tmp_path):
    config = {"models": {"tiny": {"local": str(tmp_path)}}, **TINY_CONFIG, "replacements": ["conv"]}
    result = snakemake(tmp_path, "-n", config=config)
    assert result.returncode != 0
    assert (
        "config error at replacements[0]: 'conv' is not one of ['none', 'linear', 'ffn', 'swiglu', 'layer', "
        "'swiglu-bestfit', 'layer-bestfit']"
        in result.stderr
    )


def test_unknown_method_is_named(tmp_path):
    config = {"models": {"tiny": {"local": str(tmp_path)}}, **TINY_CONFIG, "methods": ["magic"]}
    result = snakemake(tmp_path, "-n", config=config)
    assert result.returncode != 0 and "config error at methods[0]: 'magic' is not one of ['streamline'" in result.stderr


def test_missing_model_path_is_one_line(tmp_path):
    config = {"models": {"ghost": {"local": str(tmp_path / "nope")}}, **TINY_CONFIG}
    result = snakemake(tmp_path, "results/models/ghost/manifest.json", config=config)
    assert result.returncode != 0
    assert f"acquire_model[ghost]: model 'ghost': local path '{tmp_path / 'nope'}' has no config.json" in result.stderr
    assert not (tmp_path / "results/models/ghost/manifest.json").exists()


PLOT_JOBS = {"plot": 5, "plot_importance": 1, "all": 1}


def test_tables_plots_and_report(tiny_workflow):
    workdir, config = tiny_workflow
    tables, plots = experiment_dir(workdir) / "tables", experiment_dir(workdir) / "plots"
    main = (tables / "main.md").read_text()
    dense = next(line for line in main.splitlines() if "| dense |" in line)
    assert "| 100.0 ± 0.0 |" in dense  # RA of dense, exactly 100 on every draw
    assert r" $\pm$ " in (tables / "main.tex").read_text()
    paired = pd.read_csv(tables / "paired.csv")
    assert {"value", "dense", "removal"} <= set(paired["comparison"]) and paired["low"].notna().all()
    for name in ("accuracy", "relative_accuracy", "stability", "perplexity"):
        for ext in ("png", "pdf"):
            assert (plots / f"{name}_vs_sparsity.{ext}").stat().st_size > 1000
    assert (plots / "importance_tiny.png").is_file()
    assert (plots / "healing_cost.pdf").is_file()
    report = experiment_dir(workdir) / "report.html"
    result = snakemake(workdir, "--report", str(report), config=config)
    assert result.returncode == 0, result.stderr[-3000:]
    html = report.read_text(errors="replace")
    assert "relative_accuracy_vs_sparsity.png" in html and "healing_cost.png" in html


def test_snakemake_paper_on_the_tiny_run(tiny_workflow):
    """`snakemake paper` on the module's run: every item is written from its all.csv (only the paper's own jobs run),
    and the items whose rows this config lacks name them instead of failing."""
    workdir, config = tiny_workflow
    result = snakemake(workdir, "paper", config=config)
    assert result.returncode == 0, result.stderr[-3000:]
    out = experiment_dir(workdir) / "paper"
    for item in ("main_table", "lightweight_ablation", "stability_table", "pruning_metric"):
        assert (out / f"{item}.md").read_text().startswith("# ") and (out / f"{item}.tex").is_file()
    for item in ("sparsity_curves", "training_data_size", "healing_cost", "importance_tiny"):
        assert (out / f"{item}.png").stat().st_size > 5000 and (out / f"{item}.pdf").is_file()
    assert "missing: method ppl-window" in (out / "pruning_metric.md").read_text()
    assert "| tiny | streamline | none | 0.3 |" in (out / "main_table.md").read_text()
    # restyling one figure re-runs only that figure's rule (then the `paper` target)
    restyled = {**config, "plots": {"figures": {"sparsity_curves": {"dpi": 90}}}}
    assert dry_run_jobs(workdir, restyled, "paper") == {"paper": 1, "paper_figure": 1}


def test_nothing_to_do_after_a_run(tiny_workflow):
    workdir, config = tiny_workflow
    assert dry_run_jobs(workdir, config) == {}


def test_plot_style_change_reruns_only_plots(tiny_workflow):
    workdir, config = tiny_workflow
    assert dry_run_jobs(workdir, {**config, "plots": {"dpi": 90}}) == PLOT_JOBS


def test_new_sparsity_reruns_only_its_branch(tiny_workflow):
    workdir, config = tiny_workflow
    jobs = dry_run_jobs(workdir, {**config, "sparsities": [0.3, 0.4]})
    per_variant = {"prune": 3, "replace": 3, "accuracy": 3, "perplexity": 3, "model_stats": 3, "stability": 3}
    assert jobs == {**per_variant, "aggregate": 1, "paired": 1, "tables": 1, "current_tables": 1, **PLOT_JOBS}


def test_init_layer_change_reruns_only_the_layer_initialised_replacement(tiny_workflow):
    workdir, config = tiny_workflow
    jobs = dry_run_jobs(workdir, {**config, "training": {**config["training"], "init_layer": "best_fit"}})
    # swiglu, not linear: a new variant key (its plan is re-made in the new folder, so the heatmap's plans change)
    per_variant = {"prune": 1, "replace": 1, "accuracy": 1, "perplexity": 1, "model_stats": 1, "stability": 1}
    assert jobs == {**per_variant, "aggregate": 1, "paired": 1, "tables": 1, "current_tables": 1, **PLOT_JOBS}


BASELINE_VARIANTS = [
    *(f"{m}-none" for m in ("gromov", "last-n", "shortgpt", "random", "sleb", "shortened-ppl", "laco")),
    "streamline-lora",
    "gromov-lm-loss",
    "last-n-layer",
]


def test_baselines_and_healing_build_checkpoints(tmp_path):
    """Every criterion and the LM-loss healings through the real rules (checkpoints only, no evaluation)."""
    tokenizer = make_tokenizer()
    save_tiny_checkpoint(make_model(len(tokenizer), num_layers=8), tokenizer, tmp_path / "tiny-src")
    config = {
        "models": {"tiny": {"local": str(tmp_path / "tiny-src")}},
        **TINY_CONFIG,
        "methods": ["streamline", "gromov", "last-n", "shortgpt", "random", "sleb", "shortened-ppl", "laco"],
        "healing": ["none", "replacement", "lora", "lm-loss"],
        "replacements": ["layer"],
        "search": {"samples": 2, "seq_len": 16, "batch_size": 2},
        "laco": {"merge_layers": 2, "threshold": 0.0, "interval": 1},
        "training": {**TINY_CONFIG["training"], "epochs": 1},
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    patterns = [f"results/compressed/tiny/{v}/s0.3/*/compressed.json" for v in BASELINE_VARIANTS]
    targets = dag_paths(tmp_path, tmp_path / "config.yaml", *patterns)
    assert len(targets) == len(BASELINE_VARIANTS)
    result = snakemake(tmp_path, *targets, config=config)
    assert result.returncode == 0, result.stderr[-4000:]
    from streamline.acquisition.models import load_model

    for variant in BASELINE_VARIANTS:
        folder = variant_dir(tmp_path, "tiny", f"{variant}/s0.3")
        record = json.loads((folder / "compressed.json").read_text())
        plan = record["plan"]
        assert plan["actual_sparsity"] >= 0.3 and plan["method"] == variant.rsplit("-", 1)[0].removesuffix("-lm")
        model, _ = load_model(folder)
        assert model.config.num_hidden_layers == plan["num_layers_after"] == len(model.model.layers)
        if variant.endswith(("lora", "lm-loss", "layer")):
            assert record["training"]["trainable_params"] > 0 and record["training"]["train_seconds"] > 0
    laco = json.loads(order_file(tmp_path, "tiny", "laco").read_text())
    assert laco["merges"] and laco["search_seconds"] > 0
    last_n = json.loads((variant_dir(tmp_path, "tiny", "last-n-none/s0.3") / "plan.json").read_text())
    assert last_n["removed_layers"][-1] == 6  # the layer before the final one (of 8)


def test_killed_run_leaves_nothing_complete_and_reruns(tmp_path):
    """SIGKILL the whole run during training; the re-run redoes the interrupted job and finishes."""
    import os
    import signal
    import time

    tokenizer = make_tokenizer()
    save_tiny_checkpoint(make_model(len(tokenizer), num_layers=8), tokenizer, tmp_path / "tiny-src")
    config = {
        "models": {"tiny": {"local": str(tmp_path / "tiny-src")}},
        **TINY_CONFIG,
        "training": {**TINY_CONFIG["training"], "samples": 64, "epochs": 400},  # seconds of training to interrupt
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    pattern = "results/compressed/tiny/streamline-swiglu/s0.3/*/compressed.json"
    [target] = dag_paths(tmp_path, tmp_path / "config.yaml", pattern)
    cmd = snakemake_cmd(tmp_path, tmp_path / "config.yaml", "--cores", "1", target)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    key = Path(target).parent.name
    log = tmp_path / f"logs/replace/tiny/streamline-swiglu/s0.3/{key}.log"
    deadline = time.time() + 300
    while time.time() < deadline and not (log.is_file() and "replace:" in log.read_text(errors="replace")):
        time.sleep(0.5)
    assert log.is_file(), "the replace job never started"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / target).exists()
    assert snakemake(tmp_path, "--unlock", config=config).returncode == 0  # a SIGKILL leaves the lock behind
    result = snakemake(tmp_path, target, config=config)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((tmp_path / target).read_text())["training"]["steps"] > 0
