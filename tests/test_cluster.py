"""SLURM profile dry runs: every model-running job carries resources derived from the model's size."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import MIRROR, REPO, snakemake_cmd

HEAVY = {"acquire_model", "similarity", "replace", "accuracy", "perplexity", "model_stats"}
LIGHT = {
    "importance",
    "prune",
    "stability",
    "aggregate",
    "paired",
    "tables",
    "current_tables",
    "plot",
    "plot_importance",
    "all",
}


def dry_run(tmp_path: Path, config: dict, *args: str) -> list[tuple[str, dict[str, str]]]:
    """[(rule name, resources)] of every job in a dry run."""
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    cmd = snakemake_cmd(tmp_path, tmp_path / "config.yaml", "-n", *args)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = []
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", proc.stdout + "\n" + proc.stderr):
        head = re.match(r"(localrule|rule) (\w+):", block)
        if not head:
            continue
        found = re.search(r"resources: (.*)", block)
        resources = dict(item.split("=", 1) for item in found.group(1).split(", ")) if found else {}
        jobs.append((head.group(2), resources))
    return jobs


def test_slurm_dry_run_of_the_default_config(tmp_path):
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["data_mirror"] = str(MIRROR)
    jobs = dry_run(tmp_path, config, "--profile", str(REPO / "profiles/slurm"))
    assert {name for name, _ in jobs} == HEAVY | LIGHT
    for name, resources in jobs:
        if name in HEAVY:
            assert resources["slurm_partition"] == "gpu"
            # 0.135B parameters: no GPU under resources.gpu=auto; RAM = ceil((0.135 x 4 B x 1.3 + 4 GB) x 1024)
            assert resources["gpu"] == "0" and resources["mem_mb"] == "4815"
            assert resources["runtime"] == "32"  # int(30 + 20 x 0.135)
        else:
            assert "gpu" not in resources and resources["mem_mb"] == "4000"  # the profile's default


@pytest.mark.parametrize("size_b,gpus,mem_mb", [(6.74, 1, 22041), (70.6, 3, 192062)])
def test_large_model_gets_gpus_on_every_heavy_rule(tmp_path, size_b, gpus, mem_mb):
    config = {"models": {"big": {"hf": "meta-llama/Llama-2-7b-hf", "size_b": size_b}}, "data_mirror": str(MIRROR)}
    jobs = dry_run(tmp_path, config, "--profile", str(REPO / "profiles/slurm"))
    heavy = [(name, res) for name, res in jobs if name in HEAVY]
    assert {name for name, _ in heavy} == HEAVY
    for name, resources in heavy:
        # 7B: ceil(6.74 x 2 x 1.3 / 80) = 1 GPU; 70B: ceil(183.6 / 80) = 3 GPUs. RAM: size x 2 B x 1.3 + 4 GB.
        assert resources["gpu"] == str(gpus), name
        assert resources["mem_mb"] == str(mem_mb), name
        assert int(resources["runtime"]) == int(30 + 20 * size_b)
        assert resources["cpus_per_task"] == "8"


def test_snakemake_lint_is_clean():
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "--lint", "--snakefile", str(REPO / "Snakefile"), "--directory", str(REPO)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Congratulations" in proc.stdout + proc.stderr


def profile(name: str) -> dict:
    return yaml.safe_load((REPO / name / "profile.yaml").read_text())


def test_the_workflow_profile_overrides_no_cluster_setting():
    """profiles/default is read after any --profile and wins: a key there with another value than a profile's would
    silently replace it (its latency-wait: 5 once replaced profiles/slurm's 60 s)."""
    workflow = profile("profiles/default")
    for name in ("profiles/slurm", "profiles/local", "tests/cluster/profile"):
        other = profile(name)
        clashes = {key: (value, other[key]) for key, value in workflow.items() if key in other and other[key] != value}
        assert not clashes, f"profiles/default overrides {name}: {clashes}"


def test_the_test_overlay_changes_only_site_settings():
    """tests/cluster/profile replaces profiles/slurm's default-resources as a whole: the same block but partition
    and account, so the SLURM test runs the real profile's values."""
    slurm, overlay = profile("profiles/slurm"), profile("tests/cluster/profile")
    site = {"slurm_partition", "slurm_account"}
    assert {k: v for k, v in overlay["default-resources"].items() if k not in site} == {
        k: v for k, v in slurm["default-resources"].items() if k not in site
    }
    assert set(overlay) - {"default-resources"} <= {
        "slurm-status-command",
        "slurm-init-seconds-before-status-checks",
        "slurm-keep-successful-logs",
    }
