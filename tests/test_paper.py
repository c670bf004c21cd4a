"""Paper items (issue 14): the ppl-window criterion, the paper library functions on a hand-made all.csv, and dry
runs of `snakemake paper` for the CPU and GPU configs."""

from __future__ import annotations

import copy
import json

import pandas as pd
import pytest
import torch

from streamline.importance.windows import best_window
from streamline.pruning import criteria
from streamline.pruning.plans import plan_layers, plan_pruning
from streamline.pruning.searches import calibration_nll, ppl_window_lengths, ppl_window_table
from streamline.workflow.record_steps import prune_step


def _batches(seed: int = 0) -> list[torch.Tensor]:
    return list(torch.randint(0, 200, (4, 10), generator=torch.Generator().manual_seed(seed)).split(2))


def _nll_without(model, removed: set[int], batches) -> float:
    """Independent path: a deep copy holding only the kept layers (no context manager)."""
    clone = copy.deepcopy(model)
    clone.model.layers = torch.nn.ModuleList([m for i, m in enumerate(clone.model.layers) if i not in removed])
    clone.config.num_hidden_layers = len(clone.model.layers)
    return calibration_nll(clone, batches)


def test_ppl_window_scores_every_window_by_hand_and_picks_the_lowest_nll(tiny_model):
    data = _batches()
    table = ppl_window_table(tiny_model, data, [2, 3], progress=False)
    # 6 layers: windows of 2 start at 0..4, of 3 at 0..3, like importance.window_table's
    assert sorted(zip(table.num_layers, table.start_layer)) == [(2, s) for s in range(5)] + [(3, s) for s in range(4)]
    by_hand = {
        (s, n): _nll_without(tiny_model, set(range(s, s + n)), data)
        for s, n in zip(table.start_layer, table.num_layers)
    }
    for row in table.itertuples():
        assert row.score == pytest.approx(by_hand[(row.start_layer, row.num_layers)], rel=1e-5)
    assert set(table.metric) == {"calibration_nll"}
    for n in (2, 3):
        expected = min((s for s, m in by_hand if m == n), key=lambda s: by_hand[(s, n)])
        assert int(best_window(table, n)["start_layer"]) == expected


def test_ppl_window_lengths_cover_one_more_than_the_target_needs():
    by_count = lambda removed: len(removed) >= 3
    assert ppl_window_lengths(6, by_count) == [1, 2, 3, 4]  # 4: a replacement may add one layer back
    assert ppl_window_lengths(6, lambda removed: len(removed) >= 5) == [1, 2, 3, 4, 5]  # capped at L-1
    uneven = [10, 10, 10, 40, 10, 10]  # every window of 2 must reach 20% of 90: the one with layer 3 alone is not
    enough = criteria.enough_for_target(uneven, 90, 0.2)
    assert ppl_window_lengths(6, enough) == [1, 2, 3]


def test_ppl_window_is_a_search_criterion_that_removes_a_window():
    entry = criteria.get("ppl-window")
    assert (entry.kind, entry.window, entry.job, entry.metric) == ("search", True, "select_layers", None)


def test_ppl_window_plan_removes_the_lowest_nll_window(tmp_path):
    """prune_step reads the select_layers output's window table; a replacement is allowed (a window method)."""
    rows = [
        {"start_layer": s, "num_layers": n, "score": 5.0 + abs(s - 2) + n, "metric": "calibration_nll"}
        for n in range(1, 5)
        for s in range(7 - n)
    ]
    (tmp_path / "order.json").write_text(json.dumps({"method": "ppl-window", "windows": rows}))
    manifest = {"layer_params": [100] * 6, "parameters": 700, "hidden_size": 4, "mlp_params": [60] * 6}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    plan = prune_step(
        scores=tmp_path / "order.json",
        manifest_path=tmp_path / "manifest.json",
        sparsity=0.3,
        layers=None,
        healing="swiglu",
        method="ppl-window",
        settings={},
        sparsity_of="layers",
        plan_path=tmp_path / "plan.json",
    )
    # swiglu adds 60 back: 3 layers give (300-60)/600 = 0.4 >= 0.3, 2 give 140/600 < 0.3; lowest NLL start 2
    assert plan["removed_layers"] == [2, 3, 4] and plan["metric"] == "calibration_nll"
    assert plan == {**plan_pruning(pd.DataFrame(rows), manifest, 0.3, "swiglu", "layers"), "method": "ppl-window"}
    assert plan_layers(pd.DataFrame(rows), manifest, 2, "none", "layers")["removed_layers"] == [2, 3]


# ---- the paper library on a hand-made all.csv ------------------------------------------------------------------

from streamline.reporting import paper
from streamline.reporting.frame import paper_target, variant_frame

TASKS = ("boolq_mirror", "piqa_mirror")


def _row(method, healing, sparsity, task, metric, value, scale=None, tokens=0, n=100, layers="", **extra):
    return {
        "model": "m",
        "method": method,
        "healing": healing,
        "target_sparsity": sparsity,
        "target_layers": None,
        "actual_sparsity": sparsity,
        "layers_removed": len(layers.split()),
        "removed_layers": layers,
        "task": task,
        "metric": metric,
        "value": value,
        "stderr": None,
        "n_examples": n,
        "experiment": "e",
        "training_scale": scale,
        "training_tokens": tokens,
        **extra,
    }


def fake_all_csv(path, with_ppl_window=True):
    """dense; streamline none/linear/ffn/swiglu/layer/lora at 0.125, 0.25, 0.375; at 0.25 ffn and lora also at
    2x and 4x the training tokens; shortgpt none; ppl-window none and layer. Accuracy: acc_ppl, acc (boolq has no
    acc_norm); values chosen so every number below can be checked by hand."""
    rows = []

    def variant(method, healing, sparsity, acc, ppl, stab=None, scale=None, seconds=None, layers="9 10 11"):
        tokens = 32768 * scale if scale else 0
        for k, task in enumerate(TASKS):
            rows.append(_row(method, healing, sparsity, task, "acc_ppl", acc[k], scale, tokens, layers=layers))
            rows.append(_row(method, healing, sparsity, task, "acc", acc[k] - 0.1, scale, tokens, layers=layers))
            if task == "piqa_mirror":
                rows.append(_row(method, healing, sparsity, task, "acc_norm", 0.99, scale, tokens, layers=layers))
            if stab is not None:
                for metric, value in (
                    ("stability", stab[k]),
                    ("prediction_agreement", stab[k] - 0.1),
                    ("stability_ess", 50.0 + k),
                ):
                    rows.append(_row(method, healing, sparsity, task, metric, value, scale, tokens, layers=layers))
        rows.append(_row(method, healing, sparsity, "wikitext2", "perplexity", ppl, scale, tokens, n=16, layers=layers))
        if seconds is not None:
            for metric, value in (
                ("train_seconds", seconds),
                ("train_tokens", 5 * tokens),
                ("trainable_params", 2.6e6 if healing != "lora" else 1.1e6),
                ("peak_rss_mb", 2048.0 if healing != "lora" else 4096.0),
            ):
                rows.append(_row(method, healing, sparsity, "", metric, value, scale, tokens, layers=layers))

    variant("dense", "none", 0.0, (0.60, 0.70), 20.0, layers="")
    for s, drop in ((0.125, 0.02), (0.25, 0.10), (0.375, 0.20)):
        variant("streamline", "none", s, (0.60 - drop, 0.70 - drop), 40.0 / (1 - 2 * drop), stab=(0.9, 0.8))
        for i, kind in enumerate(("linear", "ffn", "swiglu", "layer", "lora")):
            variant(
                "streamline",
                kind,
                s,
                (0.60 - drop + 0.01 * i, 0.70 - drop),
                30.0 + i,
                stab=(0.95, 0.85),
                scale=1,
                seconds=10.0 * (i + 1),
            )
    for scale in (2, 4):
        variant(
            "streamline",
            "ffn",
            0.25,
            (0.52 + 0.01 * scale, 0.60),
            30.0 - scale,
            stab=(0.95, 0.85),
            scale=scale,
            seconds=20.0 * scale,
        )
        variant(
            "streamline",
            "lora",
            0.25,
            (0.54 + 0.01 * scale, 0.60),
            34.0 - scale,
            stab=(0.95, 0.85),
            scale=scale,
            seconds=50.0 * scale,
        )
    variant("shortgpt", "none", 0.25, (0.40, 0.50), 300.0, stab=(0.5, 0.6), layers="3 20 21")
    if with_ppl_window:
        variant("ppl-window", "none", 0.25, (0.55, 0.65), 35.0, stab=(0.9, 0.9), layers="20 21 22")
        variant(
            "ppl-window", "layer", 0.25, (0.57, 0.66), 33.0, stab=(0.9, 0.9), scale=1, seconds=40.0, layers="20 21 22"
        )
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_variant_frame_by_hand(tmp_path):
    frame, tasks = variant_frame(pd.read_csv(fake_all_csv(tmp_path / "all.csv")))
    assert tasks == list(TASKS)
    row = frame[
        (frame.method == "streamline")
        & (frame.healing == "ffn")
        & (frame.target_sparsity == 0.25)
        & (frame.training_scale == 1)
    ].iloc[0]
    # acc_ppl wins over acc_norm and acc: (0.60 - 0.10 + 0.01, 0.70 - 0.10) -> Avg 55.5, RA 55.5 / 65
    assert (row["boolq_mirror"], row["piqa_mirror"], row["Avg"]) == pytest.approx((51.0, 60.0, 55.5))
    assert row["RA"] == pytest.approx(100 * 55.5 / 65.0)
    assert row["stability"] == pytest.approx(90.0) and row["prediction_agreement"] == pytest.approx(80.0)
    assert row["stability_ess"] == pytest.approx(50.5) and row["perplexity"] == pytest.approx(31.0)
    assert (row["train_seconds"], row["trainable_params"], row["training_tokens"]) == (20.0, 2.6e6, 32768)
    assert (
        len(frame) == 1 + 3 * 6 + 4 + 1 + 2
    )  # dense, 3 targets x 6 healings, 2 extra scales x 2, shortgpt, ppl-window


def item(name: str, csv, tmp_path, ext=("md", "tex")):
    """Build paper item `name` from the fake all.csv (no paired.csv) into tmp_path."""
    return paper.write_item(name, [tmp_path / f"{name}.{e}" for e in ext], all_csv=csv, dpi=40)


def test_main_table_at_the_paper_target(tmp_path):
    out = item("main_table", fake_all_csv(tmp_path / "all.csv"), tmp_path)
    assert set(out.loc[out.method != "dense", "target_sparsity"]) == {0.25}
    assert set(out["training_scale"]) == {1.0}  # the base budget only
    assert len(out) == 1 + 6 + 1 + 2
    md = (tmp_path / "main_table.md").read_text()
    assert "| m | streamline | linear | 0.25 | 50.0 | 60.0 | 55.0 | 84.6 | 90.0 | 30.0 |" in md
    assert "**" not in md and "no intervals: this table was made without paired.csv" in md  # nothing bold untested
    tex = (tmp_path / "main_table.tex").read_text()
    assert "ppl-window" in tex and "% accuracy (%) per task: acc_ppl" in tex


def test_missing_rows_are_named_not_fatal(tmp_path):
    csv = fake_all_csv(tmp_path / "all.csv", with_ppl_window=False)
    item("pruning_metric", csv, tmp_path)
    md = (tmp_path / "pruning_metric.md").read_text()
    assert "missing: method ppl-window (add it with config `methods: [streamline, ppl-window]`)" in md
    table = pd.read_csv(csv)
    table = table[~table.healing.isin(["linear"])]
    table.to_csv(csv, index=False)
    out = item("lightweight_ablation", csv, tmp_path)
    assert list(out.healing) == ["none", "none", "ffn", "swiglu", "layer"]  # dense, then the paper's order
    assert "missing: streamline with linear" in (tmp_path / "lightweight_ablation.md").read_text()


def test_stability_table_means_over_tasks(tmp_path):
    out = item("stability_table", fake_all_csv(tmp_path / "all.csv"), tmp_path)
    row = out[(out.method == "shortgpt")].iloc[0]
    assert (row["stability"], row["prediction_agreement"], row["Avg"]) == pytest.approx((55.0, 45.0, 45.0))
    assert "dense" not in set(out.method)


def test_paper_target_is_the_configured_sparsity_nearest_a_quarter():
    frame = pd.DataFrame(
        {"method": ["dense", "a", "a", "a"], "target_layers": [0, 0, 0, 8], "target_sparsity": [0.0, 0.2, 0.3, 0.0]}
    )
    assert paper_target(frame) == 0.2  # a tie goes to the smaller
    assert paper_target(frame.iloc[[0, 3]]) is None


def test_figures_render_from_the_fake_table(tmp_path):
    csv = fake_all_csv(tmp_path / "all.csv")
    for name in paper.names("figure"):
        item(name, csv, tmp_path, ("png", "pdf"))
        assert (tmp_path / f"{name}.png").stat().st_size > 1000 and (tmp_path / f"{name}.pdf").is_file()


def test_registry_kinds_and_captions():
    """Every item has a kind and a caption; the rules' wildcards and `snakemake paper` come from this registry."""
    assert set(paper.names("table")) == {"main_table", "lightweight_ablation", "stability_table", "pruning_metric"}
    assert set(paper.names("figure")) == {"sparsity_curves", "training_data_size", "healing_cost"}
    assert paper.names("model_figure") == ["importance"]
    assert all(entry.kind in paper.KINDS and len(entry.caption) > 80 for entry in paper.ITEMS.values())
    with pytest.raises(ValueError, match="paper item 'nope' is unknown; allowed: main_table, "):
        paper.get("nope")


# ---- dry runs of `snakemake paper` for the three paper configs --------------------------------------------------

import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
PAPER_RULES = {"paper_table": 4, "paper_figure": 3, "paper_model_figure": 1}  # jobs per model: 4 + 3 + 1


def _dry_run(workdir: Path, paper_config: str, *targets: str) -> tuple[dict[str, int], str]:
    """Rule -> job count of `snakemake -n --configfile configs/<paper_config>` over the project's config.yaml (as a
    user runs it: its models replace the default's).
    Nothing is downloaded: the GPU configs' `hf:` models and hub tasks are only named."""
    shutil.copy(REPO / "config.yaml", workdir / "config.yaml")
    (workdir / "data").mkdir(exist_ok=True)
    (workdir / "data/slimpajama-6b-100k.txt").write_text("placeholder text\n")  # the GPU configs' training text
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(REPO / "Snakefile"),
        "--directory",
        str(workdir),
        "--configfile",
        str(REPO / "configs" / paper_config),
        "-n",
        "--cores",
        "2",
        *targets,
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    text = result.stdout + result.stderr
    assert result.returncode == 0, text[-3000:]
    jobs = {}
    for line in text.split("Job stats:")[1].split("total")[0].splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            jobs[parts[0]] = int(parts[1])
    return jobs, text


# Compressed variants each paper config asks for, counted by hand from its grid and its `ablations`:
# paper-cpu: the sweep 3 methods x 3 sparsities x none (9); at 0.25 layer + LoRA for the window methods
# streamline and ppl-window, LoRA for shortgpt (5); linear, ffn, swiglu for streamline (3); layer and LoRA at
# 2x and 4x for streamline (4) = 21. The GPU configs: the sweep, none + layer for the window methods streamline,
# ppl-window, last-n and none for shortgpt, laco, sleb, shortened-ppl, x 3 sparsities (30); at 0.25 ffn + LoRA for
# the window methods, LoRA for the others (10); linear, swiglu for streamline (2); layer and LoRA at 4 smaller
# budgets (8) = 50.
VARIANTS = {"paper-cpu.yaml": 21, "paper-llama2-7b.yaml": 50, "paper-llama3.1-8b.yaml": 50}


@pytest.mark.parametrize("name", ["paper-cpu.yaml", "paper-llama2-7b.yaml", "paper-llama3.1-8b.yaml"])
def test_paper_target_dry_run(tmp_path, name):
    config = yaml.safe_load((REPO / "configs" / name).read_text())
    jobs, text = _dry_run(tmp_path, name, "paper")
    assert {rule: n for rule, n in jobs.items() if rule.startswith("paper_")} == PAPER_RULES and jobs["paper"] == 1
    assert jobs["accuracy"] == 1 + VARIANTS[name]  # dense + every compressed variant, once
    assert f"results/experiments/{config['experiment']}/paper/main_table.md" in text
    if name != "paper-cpu.yaml":
        assert config["calibration"]["samples"] == 50 and config["calibration"]["seq_len"] == 2048
        assert config["evaluation"]["limit"] is None
        assert config["evaluation"]["tasks"] == [
            "arc_challenge",
            "arc_easy",
            "boolq",
            "hellaswag",
            "openbookqa",
            "rte",
            "winogrande",
        ]


def test_one_paper_item_builds_alone(tmp_path):
    jobs, _ = _dry_run(tmp_path, "paper-cpu.yaml", "results/experiments/paper-cpu/paper/importance_smollm2-135m.png")
    assert jobs["paper_model_figure"] == 1 and not set(jobs) & {"paper_table", "paper_figure"}
    assert "accuracy" not in jobs  # the heatmap needs the importance table and the plans, no evaluation


def test_all_csv_reports_the_healing_jobs_cost():
    """report._metric_rows: the training record's trainable parameters and peak memory become all.csv rows (the
    healing-cost figure reads them); a record without them (older runs) adds none."""
    from streamline.reporting.collect import _metric_rows

    stats = {"prefill_tok_s": 1.0, "decode_tok_s": 1.0, "checkpoint_bytes": 1, "num_layers": 2}
    ppl = {"perplexity": 9.0, "windows": 2}
    record = {"train_seconds": 3.0, "tokens_seen": 64, "trainable_params": 1234, "peak_rss_mb": 512.5}
    rows = {r["metric"]: r["value"] for r in _metric_rows({}, ppl, stats, {}, record)}
    assert (rows["trainable_params"], rows["peak_rss_mb"], rows["train_seconds"]) == (1234, 512.5, 3.0)
    assert "peak_gpu_mb" not in rows
    old = {r["metric"] for r in _metric_rows({}, ppl, stats, {}, {"train_seconds": 3.0, "tokens_seen": 64})}
    assert not old & {"trainable_params", "peak_rss_mb", "peak_gpu_mb"}
