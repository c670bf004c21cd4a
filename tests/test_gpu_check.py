"""benchmarks/gpu_check.py on CPU: its refusal without CUDA, and its comparison of two all.csv tables by hand."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pandas as pd
import pytest
import torch
from conftest import REPO

from streamline.acquisition.models import resolve_device
from streamline.reporting.collect import COLUMNS

sys.path.insert(0, str(REPO / "benchmarks"))
import gpu_check

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is visible here")


@no_cuda
def test_the_script_stops_with_one_line_without_cuda(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks/gpu_check.py"), "--keep", str(tmp_path / "scratch")],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("gpu_check: no CUDA device visible (torch ") and "NVIDIA GPU" in line
    assert not (tmp_path / "scratch").exists()  # nothing was run


def test_refusal_line_names_the_torch_build(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    line = gpu_check.cuda_refusal()
    assert line == (
        f"gpu_check: no CUDA device visible (torch {torch.__version__}, "
        f"{f'CUDA {torch.version.cuda}' if torch.version.cuda else 'a CPU-only build'}); "
        "run it on a machine with an NVIDIA GPU and a CUDA build of torch"
    )


@no_cuda
def test_a_named_cuda_device_the_node_lacks_is_one_line():
    assert resolve_device("cpu") == "cpu" and resolve_device("auto") == "cpu"
    for name in ("cuda", "cuda:1"):
        with pytest.raises(RuntimeError) as err:
            resolve_device(name)
        assert str(err.value) == (
            f"device {name!r}: 0 CUDA device(s) visible on {socket.gethostname()}; use device: auto or cpu, "
            "or run the job where a GPU is (on a cluster: a GPU partition)"
        )


def table(variant_key: str, **values: float) -> pd.DataFrame:
    """A hand-made all.csv: dense and one pruned variant, each with acc, perplexity, checkpoint_bytes and a
    machine metric; `values` overrides the pruned variant's values by metric name."""
    rows = []
    for method, healing, removed, params in (("dense", "none", "", 1000), ("streamline", "linear", "3 4", 800)):
        base = {"acc": 0.50, "perplexity": 20.0, "checkpoint_bytes": 4000.0, "prefill_tok_s": 1000.0}
        if method == "streamline":
            base = {**base, **values}
        for metric, value in base.items():
            rows.append({
                "model": "m", "method": method, "healing": healing, "target_sparsity": 0.0 if removed == "" else 0.25,
                "target_layers": None, "actual_sparsity": 0.0 if removed == "" else 0.2, "sparsity_of": "all",
                "layers_removed": len(removed.split()), "removed_layers": removed, "params": params,
                "task": "piqa" if metric == "acc" else ("wikitext2" if metric == "perplexity" else ""),
                "metric": metric, "value": value, "stderr": None, "n_examples": 100 if metric == "acc" else 16,
                "seed": 0, "config_hash": "h", "dtype": "bfloat16", "experiment": "default",
                "variant_key": variant_key if method != "dense" else None,
                "training_scale": 1.0 if method != "dense" else None, "training_tokens": 0,
            })  # fmt: skip
    return pd.DataFrame(rows, columns=COLUMNS)


def checks(cpu: pd.DataFrame, gpu: pd.DataFrame) -> dict[tuple[str, str], tuple[float, bool]]:
    """(method, what) -> (difference, ok) under the default tolerances (5% perplexity, 5 accuracy points)."""
    frame = gpu_check.compare_runs(cpu, gpu, ppl_rtol=0.05, acc_atol=5.0)
    return {(r.method, r.what): (r.difference, r.ok) for r in frame.itertuples()}


def test_values_within_tolerance_pass_and_machine_rows_are_not_compared():
    cpu = table("aaaa1111")
    gpu = table("bbbb2222", acc=0.53, perplexity=20.9, prefill_tok_s=90000.0)  # +3 points, +4.5%, 90x faster
    result = checks(cpu, gpu)
    assert result[("streamline", "acc")] == (pytest.approx(3.0), True)
    assert result[("streamline", "perplexity")] == (pytest.approx(0.045), True)
    assert result[("streamline", "checkpoint_bytes")] == (0.0, True)
    assert result[("dense", "acc")] == (0.0, True)
    assert result[("streamline", "removed_layers")] == (0.0, True)  # matched across different variant keys
    assert not any(what == "prefill_tok_s" for _, what in result)
    assert all(ok for _, ok in result.values())


def test_values_outside_tolerance_fail():
    cpu = table("aaaa1111")
    gpu = table("bbbb2222", acc=0.44, perplexity=21.2, checkpoint_bytes=4002.0)  # -6 points, +6%, 2 bytes
    result = checks(cpu, gpu)
    assert result[("streamline", "acc")] == (pytest.approx(6.0), False)
    assert result[("streamline", "perplexity")] == (pytest.approx(0.06), False)
    assert result[("streamline", "checkpoint_bytes")] == (1.0, False)
    assert result[("dense", "perplexity")] == (0.0, True)


def test_another_plan_and_a_missing_row_fail():
    cpu = table("aaaa1111")
    gpu = table("bbbb2222")
    gpu.loc[gpu["method"] == "streamline", "removed_layers"] = "4 5"  # bf16 importance chose another window
    gpu = gpu[~((gpu["method"] == "dense") & (gpu["metric"] == "acc"))]
    frame = gpu_check.compare_runs(cpu, gpu)
    bad = frame[~frame["ok"]]
    assert sorted(bad["what"]) == ["acc (missing in the GPU run)", "removed_layers"]
    assert bad.set_index("what").loc["removed_layers", ["cpu", "gpu"]].tolist() == ["3 4", "4 5"]
