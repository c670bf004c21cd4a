"""Issue 16: the 2025 peers (reverse, replaceme, replaceme-cosine, linearpatch, last-layers) through the real rules
on a tiny model, in ONE Snakemake run of the default target (checkpoints, evaluation, all.csv and the plots)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from conftest import (
    TINY_RUN,
    experiment_dir,
    make_model,
    make_tokenizer,
    save_tiny_checkpoint,
    snakemake_cmd,
    variant_dir,
)
from transformers import AutoModelForCausalLM

from streamline.acquisition.models import load_model
from streamline.healing.kinds import FIT_TRAINING_KEYS

pytestmark = pytest.mark.slow

FITS = ("replaceme", "replaceme-cosine", "linearpatch")
VARIANTS = [*(f"last-n-{h}" for h in ("none", *FITS, "last-layers")), "reverse-none", "reverse-last-layers"]
LAYERS = 8
TRAIN_TOKENS = 8 * 32  # training.samples x training.seq_len


def result_paths(workdir: Path) -> dict[str, Path]:
    """Every results/ path this file reads (one place to follow a change of the result layout)."""
    experiment = experiment_dir(workdir)
    paths = {variant: variant_dir(workdir, "tiny", f"{variant}/s0.3") for variant in VARIANTS}
    return {
        **paths,
        "all.csv": experiment / "tables/all.csv",
        "healing_cost.png": experiment / "plots/healing_cost.png",
    }


CONFIG = {
    **TINY_RUN,
    # last-n's window ends before the final layer, so it never starts at layer 0 (ReplaceMe needs a layer before it)
    "methods": ["last-n", "reverse"],
    "healing": ["none", *FITS, "last-layers"],
    "replacements": ["none"],
    "training": {
        "samples": 8,
        "val_samples": 4,
        "seq_len": 32,
        "epochs": 1,
        "batch_size": 4,
        "lr": 0.003,
        "shard_sequences": 4,
    },
    "evaluation": {"tasks": ["piqa_mirror"], "limit": 4, "batch_size": 4},
}


@pytest.fixture(scope="module")
def peers_run(tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    workdir = tmp_path_factory.mktemp("peers")
    tokenizer = make_tokenizer()
    save_tiny_checkpoint(make_model(len(tokenizer), num_layers=LAYERS), tokenizer, workdir / "tiny-src")
    config = {"models": {"tiny": {"local": str(workdir / "tiny-src")}}, **CONFIG}
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    cmd = snakemake_cmd(workdir, workdir / "config.yaml", "--cores", "2")
    result = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=1500)
    assert result.returncode == 0, result.stderr[-4000:]
    return workdir, result_paths(workdir)


def record(paths: dict[str, Path], variant: str) -> dict:
    return json.loads((paths[variant] / "compressed.json").read_text())


def test_every_peer_checkpoint_loads_with_the_plans_layers(peers_run):
    _, paths = peers_run
    for variant in VARIANTS:
        plan = record(paths, variant)["plan"]
        model, _ = load_model(paths[variant])
        assert model.config.num_hidden_layers == plan["num_layers_after"] == len(model.model.layers), variant


def test_reverse_removes_the_final_layer_first(peers_run):
    _, paths = peers_run
    plan = record(paths, "reverse-none")["plan"]
    n = plan["num_layers_removed"]
    assert plan["removal_order"] == list(range(LAYERS - 1, LAYERS - 1 - n, -1))  # 7, 6, ...: the final one first
    assert record(paths, "last-n-none")["plan"]["removed_layers"][-1] == LAYERS - 2  # last-n keeps it


def test_replaceme_checkpoints_load_stock_with_identical_logits(peers_run):
    _, paths = peers_run
    probe = torch.randint(0, 300, (2, 16), generator=torch.Generator().manual_seed(0))
    for variant in ("last-n-replaceme", "last-n-replaceme-cosine"):
        stock = AutoModelForCausalLM.from_pretrained(paths[variant], dtype=torch.float32).eval()
        project, _ = load_model(paths[variant], torch.float32, "cpu")
        with torch.no_grad():
            assert torch.equal(stock(probe).logits, project(probe).logits), variant
        assert json.loads((paths[variant] / "streamline_extras.json").read_text()) == {}  # fused: nothing beside


def test_linearpatch_is_stored_as_the_linear_extra_after_the_window(peers_run):
    _, paths = peers_run
    plan = record(paths, "last-n-linearpatch")["plan"]
    extras = json.loads((paths["last-n-linearpatch"] / "streamline_extras.json").read_text())
    assert extras["linear"]["position"] == plan["start_layer"]
    assert plan["params_replacement"] == 32**2  # the stored d x d patch


def test_fits_record_their_cost_and_get_only_the_data_settings(peers_run):
    _, paths = peers_run
    for kind in FITS:
        folder = paths[f"last-n-{kind}"]
        stats = record(paths, f"last-n-{kind}")["training"]
        assert stats["train_seconds"] == stats["fit_seconds"] > 0 and stats["peak_rss_mb"] > 0
        assert stats["calibration_tokens"] == stats["tokens_seen"] == TRAIN_TOKENS
        assert stats["trainable_params"] == (32 if kind == "linearpatch" else 32 * 32)
        assert stats["val_loss_identity"] > 0 and stats["best_val_loss"] > 0
        training = json.loads((folder / "provenance.json").read_text())["config"]["training"]
        assert set(training) <= set(FIT_TRAINING_KEYS) and "lr" not in training and "epochs" not in training
    for variant in ("last-n-last-layers", "reverse-last-layers"):
        stats = record(paths, variant)["training"]
        assert stats["last_layers"] == 3 and stats["trainable_params"] > 0 and stats["train_seconds"] > 0


def test_peers_reach_all_csv_and_the_healing_cost_plot(peers_run):
    _, paths = peers_run
    table = pd.read_csv(paths["all.csv"])
    compressed = table[table["method"] != "dense"]
    variants = {f"{m}-{h}" for m, h in zip(compressed["method"], compressed["healing"])}
    assert variants == set(VARIANTS)
    cost = compressed[compressed["metric"] == "train_seconds"].groupby("healing")["value"].min()
    assert all(cost[kind] > 0 for kind in (*FITS, "last-layers"))
    tokens = compressed[(compressed["metric"] == "train_tokens") & compressed["healing"].isin(FITS)]
    assert (tokens["value"] == TRAIN_TOKENS).all() and len(tokens) == len(FITS)
    assert not compressed[compressed["metric"] == "acc"]["value"].isna().any()
    assert paths["healing_cost.png"].is_file()
