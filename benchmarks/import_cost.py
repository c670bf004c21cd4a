"""What a Snakemake start and one job pay before they do any work: the imports (issue 23.7).

Times, in fresh interpreters on this machine (median of --repeats): the imports of a job that loads no model
(`streamline.workflow.record_steps`, what prune, stability, the tables, plots and paper items run), of a model job
(`streamline.workflow.steps`), of the bare interpreter, and a dry run of the users' command
(`snakemake -n --cores 1 results/tables/all.csv`, which parses the Snakefile and plans the default). Prints the
ratios within this one run. A dry run also pays the SLURM executor plugin's `scontrol show config` where SLURM is
installed: fast with a running controller, up to its 10 s timeout without one (the CPU line says which).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).with_name("snakemake")


def wall(cmd: list[str], repeats: int) -> float:
    """Median wall seconds of `cmd` run `repeats` times in REPO, importing this checkout's package (each must
    succeed)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(cmd, cwd=REPO, env=env, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def cpu_line() -> str:
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    model = next((line.split(":", 1)[1].strip() for line in flags.splitlines() if line.startswith("model name")), "?")
    native = [f for f in ("avx512_bf16", "amx_bf16") if f in flags]
    return f"{model} ({platform.machine()}), native bf16: {', '.join(native) or 'none'}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    python = [sys.executable, "-c"]
    rows = {
        "python (bare)": wall([*python, "pass"], args.repeats),
        "record job imports": wall([*python, "import streamline.workflow.record_steps"], args.repeats),
        "model job imports": wall([*python, "import streamline.workflow.steps"], args.repeats),
        "snakemake -n (default)": wall([str(SNAKEMAKE), "-n", "--cores", "1", "results/tables/all.csv"], args.repeats),
    }
    print(f"CPU: {cpu_line()}")
    for name, seconds in rows.items():
        print(f"{name:24s} {seconds:6.2f} s")
    print(f"model / record job imports: {rows['model job imports'] / rows['record job imports']:.1f}x")


if __name__ == "__main__":
    main()
