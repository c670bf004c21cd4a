"""Shared fixtures: a tiny random Llama and tokenizer, built in seconds, saved as a project checkpoint."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
from tokenizers import ByteLevelBPETokenizer
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from streamline.atomic import write_json
from streamline.models import build_manifest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
MIRROR = (REPO.parent / "shared" / "data").resolve()
TEXT = (
    "The quick brown fox jumps over the lazy dog. A stitch in time saves nine. "
    "Language models predict the next token from the previous ones. "
) * 20


def snakemake_cmd(workdir: Path, config_path: Path, *args: str) -> list[str]:
    """The project's Snakefile run in `workdir` with `config_path` (outputs land in `workdir`)."""
    return [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
            "--configfile", str(config_path), *args]


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
