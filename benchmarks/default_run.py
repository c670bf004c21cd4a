"""Cold run of the embedded default, timed per rule from Snakemake's own `benchmark:` files (issue 13).

Runs `snakemake --cores N` on config.yaml in a fresh scratch folder (nothing under the project's results/ is
touched; the data mirror is made absolute so the scratch run reads the same files), then a second, no-op run, and
prints: the CPU and its bf16 flags, the dtype `auto` resolved to, a per-rule table (jobs, wall seconds, max RSS,
CPU seconds) read from results/benchmarks/**.tsv, the cold total and the no-op re-run time.

    python benchmarks/default_run.py                  # this CPU as it is
    python benchmarks/default_run.py --emulate-avx2   # cap torch, oneDNN and MKL at AVX2 (no native bf16)
    python benchmarks/default_run.py --keep DIR       # run in DIR and keep it (default: a temp folder, kept)
    python benchmarks/default_run.py --overlay configs/comparison.yaml   # config.yaml + an overlay, as users run it

`--emulate-avx2` sets ATEN_CPU_CAPABILITY=avx2, ONEDNN_MAX_CPU_ISA=AVX2 and MKL_ENABLE_INSTRUCTIONS=AVX2 for the
workflow's jobs, so a machine with AVX512-BF16 runs the kernels an AVX2-only CPU would (dtype auto -> float32).
It approximates such a CPU; it is not one (clock, caches and memory bandwidth stay this machine's).
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
AVX2_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}


def cpu_description() -> str:
    model, flags = platform.processor() or "unknown CPU", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model in ("", "unknown CPU", platform.processor()):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    bf16 = sorted(flags & {"avx512_bf16", "amx_bf16", "amx_tile"}) or ["no native bf16 flag"]
    simd = "avx512f" if "avx512f" in flags else "avx2" if "avx2" in flags else "below avx2"
    return f"{model}, {os.cpu_count()} logical cores, {simd}, {', '.join(bf16)}"


def resolved_dtype(env: dict[str, str]) -> str:
    code = "from streamline.acquisition.models import compute_dtype; print(compute_dtype('auto', 'cpu'))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return out.stdout.strip().removeprefix("torch.")


def scratch_config(workdir: Path) -> Path:
    """config.yaml with the data mirror as an absolute path (the run happens in another folder)."""
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    mirror = config.get("data_mirror")
    if mirror:
        config["data_mirror"] = str((REPO / mirror).resolve())
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def snakemake(workdir: Path, configs: list[Path], cores: int, env: dict[str, str]) -> float:
    cmd = [sys.executable, "-m", "snakemake", "all", "--snakefile", str(REPO / "Snakefile"), "--directory",
           str(workdir), "--configfile", *map(str, configs), "--cores", str(cores)]
    start = time.perf_counter()
    with (workdir / "snakemake.out").open("a") as log:
        subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, check=True)
    return time.perf_counter() - start


def rule_table(workdir: Path) -> dict[str, dict[str, float]]:
    """Per rule: jobs, summed wall seconds, max RSS (MB) and summed CPU seconds from the benchmark TSVs."""
    table: dict[str, dict[str, float]] = defaultdict(lambda: {"jobs": 0, "s": 0.0, "max_rss": 0.0, "cpu_s": 0.0})
    for tsv in sorted((workdir / "results" / "benchmarks").rglob("*.tsv")):
        rel = tsv.relative_to(workdir / "results" / "benchmarks").parts  # {model}/{rule}[/...].tsv
        rule = rel[1].removesuffix(".tsv")
        with tsv.open() as fh:
            row = next(csv.DictReader(fh, delimiter="\t"))
        entry = table[rule]
        entry["jobs"] += 1
        entry["s"] += float(row["s"])
        entry["max_rss"] = max(entry["max_rss"], float(row["max_rss"]) if row["max_rss"] not in ("", "NA") else 0.0)
        entry["cpu_s"] += float(row["cpu_time"]) if row.get("cpu_time") not in (None, "", "NA") else 0.0
    return dict(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--emulate-avx2", action="store_true", help="cap torch/oneDNN/MKL at AVX2")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--keep", type=Path, default=None, help="run folder (default: a new temp folder)")
    parser.add_argument("--overlay", type=Path, action="append", default=[],
                        help="a config file whose values override config.yaml's (e.g. configs/comparison.yaml)")
    args = parser.parse_args()
    env = {**os.environ, **(AVX2_ENV if args.emulate_avx2 else {})}
    workdir = args.keep or Path(tempfile.mkdtemp(prefix="streamline-default-run-"))
    workdir.mkdir(parents=True, exist_ok=True)
    configs = [scratch_config(workdir), *(path.resolve() for path in args.overlay)]
    print(f"CPU: {cpu_description()}")
    print(f"emulated AVX2-only: {args.emulate_avx2}; dtype auto -> {resolved_dtype(env)}; run folder: {workdir}")
    print(f"configs: {', '.join(map(str, configs))}", flush=True)
    cold = snakemake(workdir, configs, args.cores, env)
    noop = snakemake(workdir, configs, args.cores, env)
    table = rule_table(workdir)
    heavy = sum(e["s"] for e in table.values())
    print("\n| rule | jobs | wall s | max RSS MB | CPU s |\n|---|---|---|---|---|")
    for rule, e in sorted(table.items(), key=lambda kv: -kv[1]["s"]):
        print(f"| {rule} | {e['jobs']} | {e['s']:.0f} | {e['max_rss']:.0f} | {e['cpu_s']:.0f} |")
    print(f"| light rules + scheduling | | {cold - heavy:.0f} | | |")
    print(f"| **cold total** | | **{cold:.0f} ({cold / 60:.1f} min)** | | |")
    print(f"\nno-op re-run: {noop:.1f} s")


if __name__ == "__main__":
    main()
