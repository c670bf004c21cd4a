"""`dtype: auto` resolves by hardware: bf16 only where it is computed natively (issue 13)."""

from __future__ import annotations

import pytest
import torch

from streamline.acquisition import models
from streamline.atomic import read_json
from streamline.provenance import write_provenance

AVX2_ONLY = {"architecture": "x86_64", "avx2": True, "avx512_f": False, "avx512_bf16": False, "amx_bf16": False}
AVX512_BF16 = {"architecture": "x86_64", "avx2": True, "avx512_f": True, "avx512_bf16": True}
AMX = {"architecture": "x86_64", "avx2": True, "avx512_f": True, "amx_bf16": True, "amx_tile": True}
ARM_BF16 = {"architecture": "aarch64", "neon": True, "bf16": True}
ARM_PLAIN = {"architecture": "aarch64", "neon": True}


def fake_cpu(monkeypatch, caps: dict, dispatch: str = "AVX512") -> None:
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: dict(caps))
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: dispatch)


@pytest.mark.parametrize(
    ("caps", "dispatch", "expected"),
    [
        (AVX2_ONLY, "AVX2", torch.float32),
        (AVX512_BF16, "AVX512", torch.bfloat16),
        (AMX, "AVX512", torch.bfloat16),
        # ATEN_CPU_CAPABILITY=avx2 on a bf16 CPU: torch's bf16 kernels are not dispatched, so float32
        (AVX512_BF16, "AVX2", torch.float32),
        (ARM_BF16, "DEFAULT", torch.bfloat16),
        (ARM_PLAIN, "DEFAULT", torch.float32),
    ],
)
def test_auto_on_cpu_follows_native_bf16(monkeypatch, caps, dispatch, expected):
    fake_cpu(monkeypatch, caps, dispatch)
    assert models.compute_dtype("auto", "cpu") is expected


@pytest.mark.parametrize(("supported", "expected"), [(True, torch.bfloat16), (False, torch.float32)])
def test_auto_on_cuda_follows_bf16_support(monkeypatch, supported, expected):
    fake_cpu(monkeypatch, AVX2_ONLY, "AVX2")  # the host CPU does not matter on CUDA
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: supported)
    assert models.compute_dtype("auto", "cuda") is expected


def test_named_dtype_is_taken_as_is(monkeypatch):
    fake_cpu(monkeypatch, AVX2_ONLY, "AVX2")
    assert models.compute_dtype("bfloat16", "cpu") is torch.bfloat16
    with pytest.raises(ValueError, match="dtype 'int8' is not supported; allowed: float32, bfloat16, float16"):
        models.compute_dtype("int8", "cpu")


def test_provenance_records_the_resolved_dtype(tmp_path):
    write_provenance(tmp_path, config={}, seed=0, device="cpu", started="t0", step="x", dtype=torch.bfloat16)
    assert read_json(tmp_path / "provenance.json")["dtype"] == "bfloat16"
