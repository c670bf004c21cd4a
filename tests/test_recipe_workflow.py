"""Issue 25: every official recipe runs by name through the real rules on a tiny model (`training.recipe: official`),
in ONE Snakemake run of the replace jobs; the recipe reaches exactly the kinds it changes (their variant keys)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import TEXT, TINY_RUN, dag_paths, make_model, make_tokenizer, save_tiny_checkpoint, snakemake_cmd

from streamline.token_windows import token_ids

pytestmark = pytest.mark.slow

LAYERS = 8
HEALING = ["none", "replacement", "lora", "lm-loss", "last-layers", "replaceme", "linearpatch"]
REPLACEMENTS = ["layer", "ffn"]
VARIANTS = ["none", "layer", "ffn", "lora", "lm-loss", "last-layers", "replaceme", "linearpatch"]
SAMPLES, BATCH = 34, 1  # 34 micro-batches an epoch: 2 steps of 16 (+2 dropped), 17 of 2, 1 of 64 (partial)


def config(workdir: Path, recipe: str) -> dict:
    return {
        **TINY_RUN,
        "models": {"tiny": {"local": str(workdir / "tiny-src")}},
        "methods": ["last-n"],  # its window ends before the final layer and starts after layer 0
        "healing": HEALING,
        "replacements": REPLACEMENTS,
        "training": {
            "dataset": str(workdir / "text.txt"),
            "samples": SAMPLES,
            "val_samples": 2,
            "seq_len": 16,
            "epochs": 1,
            "batch_size": BATCH,
            "lr": 0.003,
            "shard_sequences": 8,
            "recipe": recipe,
        },
        "evaluation": {"tasks": ["piqa_mirror"], "limit": 2, "batch_size": 2},
    }


def markers(workdir: Path, recipe: str) -> dict[str, str]:
    """variant -> its compressed.json path in the DAG of `recipe` (dry run)."""
    path = workdir / f"{recipe}.yaml"
    path.write_text(yaml.safe_dump(config(workdir, recipe)))
    found = dag_paths(workdir, path, "results/compressed/tiny/*/compressed.json")
    return {variant: next(p for p in found if f"/last-n-{variant}/" in p) for variant in VARIANTS}


@pytest.fixture(scope="module")
def official_run(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    workdir = tmp_path_factory.mktemp("recipe")
    tokenizer = make_tokenizer()
    save_tiny_checkpoint(make_model(len(tokenizer), num_layers=LAYERS), tokenizer, workdir / "tiny-src")
    (workdir / "text.txt").write_text(TEXT * 12)  # a few thousand tokens: ReplaceMe's windows are cut to what fits
    official = markers(workdir, "official")
    cmd = snakemake_cmd(workdir, workdir / "official.yaml", "--cores", "2", *official.values())
    result = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=1500)
    assert result.returncode == 0, result.stderr[-4000:]
    return workdir, official


def record(workdir: Path, path: str) -> dict:
    return json.loads((workdir / path).read_text())


def test_the_recipe_reaches_exactly_the_kinds_it_changes(official_run):
    """Changing training.recipe re-keys (so re-runs) every kind with an official recipe and no other variant."""
    workdir, official = official_run
    project = markers(workdir, "project")
    changed = {variant for variant in VARIANTS if official[variant] != project[variant]}
    assert changed == {"layer", "ffn", "lm-loss", "last-layers", "replaceme", "linearpatch"}
    for variant in changed:
        settings = json.loads((workdir / official[variant]).parent.joinpath("settings.json").read_text())
        assert settings["settings"]["replace"]["training"]["recipe"] == "official"


def test_each_official_loop_ran_with_its_steps(official_run):
    workdir, official = official_run
    stats = {variant: record(workdir, official[variant])["training"] for variant in VARIANTS}
    assert {v: s.get("recipe") for v, s in stats.items()} == {
        "none": None, "layer": "official", "ffn": "official", "lora": None, "lm-loss": "official",
        "last-layers": "official", "replaceme": "official", "linearpatch": "official",
    }  # lora has no official recipe: trained the project's way, its key unchanged
    assert stats["layer"]["steps"] == SAMPLES // 16  # train_lightweightnetwork.py: the partial group is dropped
    assert stats["ffn"]["steps"] == SAMPLES // 2 and stats["lm-loss"]["steps"] == SAMPLES // 16 + 1
    assert stats["last-layers"]["steps"] == 2  # batch 64 by accumulation: one (partial) step an epoch, 2 epochs
    assert stats["lora"]["steps"] == SAMPLES  # the project's loop: one step per batch
    curve = (workdir / official["last-layers"]).parent / "train_log.csv"
    assert len(curve.read_text().splitlines()) == 1 + 3  # epoch 0 and the official 2 epochs


def test_fits_calibrate_on_the_official_sizes_where_the_text_allows(official_run):
    workdir, official = official_run
    tokens = token_ids(make_tokenizer(), TEXT * 12).numel()
    replaceme = record(workdir, official["replaceme"])["data_split"]
    assert (replaceme["seq_len"], replaceme["train_windows"]) == (1024, min(8000, (tokens - 2 * 1024) // 1024))
    linearpatch = record(workdir, official["linearpatch"])["data_split"]
    assert (linearpatch["dataset"], linearpatch["seq_len"], linearpatch["train_windows"]) == ("wikitext2", 2048, 128)
    assert record(workdir, official["linearpatch"])["training"]["calibration_tokens"] == 128 * 2048
