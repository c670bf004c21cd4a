"""Shared fixtures: a tiny random Llama and tokenizer, built in seconds, saved as a project checkpoint."""

from __future__ import annotations

import fnmatch
import glob
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tokenizers import ByteLevelBPETokenizer
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from streamline.acquisition.models import build_manifest
from streamline.atomic import write_json

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

# `make test` runs the files in pytest-xdist workers (one per core): each worker's own torch work then takes its
# share of the cores instead of all of them (the Snakemake jobs the tests start cap their own threads).
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // _WORKERS))


def pytest_collection_modifyitems(config, items) -> None:
    """Files with slow or gguf tests (a Snakemake DAG, a real model: minutes each) first, each file's tests in their
    order: with `--dist loadfile --no-loadscope-reorder` the workers start on the longest files, so no worker is
    left with a DAG run at the end while the other idles."""
    heavy = {item.path for item in items if item.get_closest_marker("slow") or item.get_closest_marker("gguf")}
    items.sort(key=lambda item: item.path not in heavy)  # stable: the order within each group is kept


REPO = Path(__file__).resolve().parents[1]
MIRROR = (REPO.parent / "shared" / "data").resolve()

# The settings every tiny-model workflow test shares (float32 on CPU, the data mirror, tiny windows); each test adds
# its methods, healing, training and evaluation.
TINY_RUN = {
    "data_mirror": str(MIRROR),
    "dtype": "float32",
    "checkpoint_dtype": "float32",
    "device": "cpu",
    "calibration": {"dataset": "wikitext2", "samples": 4, "seq_len": 32, "batch_size": 2},
    "sparsities": [0.3],
    "perplexity": {"seq_len": 64, "max_windows": 2, "batch_size": 2},
    "speed": {"prompt_tokens": 8, "decode_tokens": 4, "repeats": 1},
}
TEXT = (
    "The quick brown fox jumps over the lazy dog. A stitch in time saves nine. "
    "Language models predict the next token from the previous ones. "
) * 20


def snakemake_cmd(workdir: Path, config_path: Path, *args: str) -> list[str]:
    """The project's Snakefile run in `workdir` with `config_path` (outputs land in `workdir`)."""
    return [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
            "--configfile", str(config_path), *args]


# What a project checkout holds besides results: the workflow files the users' command reads from its folder.
WORKFLOW_FILES = ("Snakefile", "rules", "workflow_scripts", "schemas", "report", "tasks", "envs")


def project_copy(folder: Path, config: dict) -> Path:
    """`folder` made to look like a checkout for the users' own commands (`snakemake ...` run inside it): the
    workflow files linked from this repository, `config` written as its config.yaml."""
    import yaml

    folder.mkdir(parents=True, exist_ok=True)
    for name in WORKFLOW_FILES:
        (folder / name).symlink_to(REPO / name)
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    return folder


def keyed_path(pattern: Path, *, folder: bool = False) -> Path:
    """The one path matching `pattern`, a glob over the settings-key levels of results/ (README, "Experiments")."""
    found = sorted(Path(p) for p in glob.glob(str(pattern)) if not folder or Path(p).is_dir())
    assert len(found) == 1, f"expected one {'folder' if folder else 'path'} {pattern}, found {[str(p) for p in found]}"
    return found[0]


def keyed_dir(pattern: Path) -> Path:
    return keyed_path(pattern, folder=True)


def variant_dir(workdir: Path, model: str, variant: str) -> Path:
    """results/compressed/{model}/{variant}/{key}: e.g. variant_dir(w, "tiny", "streamline-swiglu/s0.3")."""
    return keyed_dir(Path(workdir) / "results/compressed" / model / variant / "*")


def importance_dir(workdir: Path, model: str) -> Path:
    """results/importance/{model}/{key}: the pair similarities, per-metric tables and heatmaps (the order files of
    search methods are in folders of their own keys: order_file)."""
    return keyed_path(Path(workdir) / "results/importance" / model / "*" / "pair_similarity.safetensors").parent


def order_file(workdir: Path, model: str, method: str) -> Path:
    """results/importance/{model}/{key}/{method}_order.json."""
    return keyed_path(Path(workdir) / "results/importance" / model / "*" / f"{method}_order.json")


def eval_dir(workdir: Path, model: str, variant: str, step: str) -> Path:
    """results/eval/{model}/{variant}/{vkey}/{step}-{key} (dense: results/eval/{model}/dense/{step}-{key}) for a
    variant named without its key (`streamline-none/s0.3`); step: accuracy, perplexity, model_stats or stability."""
    base = Path(workdir) / "results/eval" / model
    base = base / "dense" if variant == "dense" else keyed_dir(base / variant / "*")
    return keyed_dir(base / f"{step}-*")


def experiment_dir(workdir: Path, experiment: str = "default") -> Path:
    """results/experiments/{experiment}: all.csv, the tables, plots and report of one experiment."""
    return Path(workdir) / "results/experiments" / experiment


def dry_run_outputs(text: str) -> list[str]:
    """Every output path a dry run's job list names (run it with --forceall to list the whole DAG's paths)."""
    paths = []
    for line in text.splitlines():
        if line.strip().startswith("output:"):
            paths += [p.strip() for p in line.split(":", 1)[1].split(",")]
    return paths


def dag_paths(workdir: Path, config_path: Path, *patterns: str, configs: tuple[str, ...] = ()) -> list[str]:
    """The output paths of the config's whole DAG (default target) matching the fnmatch `patterns`, in pattern
    order: how a test names keyed targets (`results/compressed/tiny/streamline-none/s0.3/*/plan.json`).
    `configs`: further config files, overriding `config_path`'s values as --configfile does."""
    cmd = snakemake_cmd(workdir, config_path, *map(str, configs), "-n", "--forceall", "--cores", "1")
    result = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    outputs = dry_run_outputs(result.stdout + result.stderr)
    found = []
    for pattern in patterns:
        matched = sorted({p for p in outputs if fnmatch.fnmatch(p, pattern)})
        assert matched, f"no output of the DAG matches {pattern}"
        found += matched
    return found


def make_tokenizer() -> PreTrainedTokenizerFast:
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator([TEXT], vocab_size=300, min_frequency=1, special_tokens=["<|endoftext|>"])
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token="<|endoftext|>", eos_token="<|endoftext|>", pad_token="<|endoftext|>"
    )


def make_model(vocab_size: int, num_layers: int = 6, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    # Random init with std 0.02 makes every layer a near-identity; a larger spread gives real structure.
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 2:
                param.normal_(0.0, 0.15)
    return model.eval()


def random_ids(vocab: int, seqs: int = 8, length: int = 24, seed: int = 1) -> torch.Tensor:
    """Seeded random token ids, (seqs, length)."""
    return torch.randint(0, vocab, (seqs, length), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="session")
def tokenizer() -> PreTrainedTokenizerFast:
    return make_tokenizer()


@pytest.fixture()
def tiny_model(tokenizer) -> LlamaForCausalLM:
    return make_model(len(tokenizer))


def save_tiny_checkpoint(model: LlamaForCausalLM, tokenizer, out_dir: Path) -> Path:
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    write_json(out_dir / "manifest.json", build_manifest(model, {"kind": "test"}, torch.float32))
    return out_dir


@pytest.fixture()
def tiny_checkpoint(tiny_model, tokenizer, tmp_path) -> Path:
    return save_tiny_checkpoint(tiny_model, tokenizer, tmp_path / "dense")
