"""Ready for the first GPU (issue 24): the embedded default on CUDA in bf16, compared with a CPU run, timed per rule.

Runs `snakemake` on config.yaml in a fresh scratch folder with `device: cuda`, `dtype: bfloat16` and
`resources.gpu: true` under `--resources gpu=1` (one model-running job on the GPU at a time, so each rule's time is
its own; light jobs run beside them), within `--timeout` seconds (default 600: the issue's 10 minutes). Then prints:
the GPU, torch and CUDA versions; per rule the jobs, wall seconds, max RSS and CPU seconds from Snakemake's
`benchmark:` files (results/benchmarks/**.tsv), grouped into importance (similarity, select_layers), replacement
training (replace; the pure training time is all.csv's `train_seconds`) and evaluation (accuracy, perplexity,
model_stats); and, given a CPU run's all.csv, every value side by side with its tolerance.

    python benchmarks/gpu_check.py --cpu-csv results/experiments/default/tables/all.csv   # a CPU run you have
    python benchmarks/gpu_check.py --run-cpu        # also run the CPU reference first (~15 min on 2 cores)
    python benchmarks/gpu_check.py                  # GPU run and timings only
    make gpu-check ARGS="--cpu-csv PATH"            # the same through make (sets up .venv first)

`--gpu-jobs N` lets N model-running jobs share the GPU (faster, but their times overlap); `--keep DIR` names the
scratch folder (default: a new temp folder, kept); the comparison is written to DIR/comparison.csv.

Tolerances (`compare_runs`): perplexity (and stability_ess) within a relative `--ppl-rtol` (default 0.05);
accuracy-like fractions (acc, acc_norm, acc_ppl, stability, prediction_agreement) within `--acc-atol` points
(default 5.0). Why these: bf16 rounds each log-likelihood to ~3 significant digits, which moves a perplexity by well
under 1% and flips a multiple-choice answer only where two choices nearly tie; at the default's 100 examples per
task one flipped answer is 1 point and one binomial standard error is ~5 points, and a CPU reference in float32
(`dtype: auto` on an AVX2-only CPU) adds the bf16 training drift of the replacements. Structural values (the
removed layers, parameter counts, checkpoint bytes, layer counts, training tokens) must be equal; the rows that
measure the machine (report.MACHINE_METRICS: speed, training seconds, peak memory) are reported, not compared.
Without a CUDA device the script stops with one line (exit 2); exit 1 when a value is outside its tolerance or the
GPU run fails or overruns.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from default_run import REPO, cpu_description, rule_table, scratch_config

from streamline.reporting.collect import MACHINE_METRICS

ALL_CSV = "results/experiments/default/tables/all.csv"
# Which rules make up each phase the issue asks to time (rule names as in rules/*.smk).
PHASES = {
    "acquisition": ("acquire_model",),
    "importance": ("similarity", "select_layers"),
    "replacement training": ("replace",),
    "evaluation": ("accuracy", "perplexity", "model_stats"),
}
POINT_METRICS = ("acc", "acc_norm", "acc_ppl", "stability", "prediction_agreement")  # fractions, compared in points
RELATIVE_METRICS = ("perplexity", "stability_ess")  # and any metric not named here (a plugin's)
EXACT_METRICS = ("checkpoint_bytes", "num_layers", "train_tokens", "trainable_params")
# One row of all.csv is one (variant, task, metric); the variant key is left out: it hashes the run settings,
# device and dtype included, so it always differs between a CPU and a GPU run.
ROW_KEY = ["model", "method", "healing", "target_sparsity", "target_layers", "training_scale", "task", "metric"]
# Per variant (read from its perplexity row): its plan and size, and the perplexity windows; must be equal.
VARIANT_COLUMNS = ["removed_layers", "layers_removed", "params", "actual_sparsity", "n_examples"]


def cuda_refusal() -> str | None:
    """The one line to stop with when no CUDA device is visible, else None."""
    import torch

    if torch.cuda.is_available() and torch.cuda.device_count() > 0:
        return None
    build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
    return (
        f"gpu_check: no CUDA device visible (torch {torch.__version__}, {build}); "
        "run it on a machine with an NVIDIA GPU and a CUDA build of torch"
    )


def gpu_description() -> str:
    import torch

    props = torch.cuda.get_device_properties(0)
    return (
        f"{props.name}, {props.total_memory / 2**30:.0f} GiB, {torch.cuda.device_count()} visible, "
        f"torch {torch.__version__}, CUDA {torch.version.cuda}, bf16 supported: {torch.cuda.is_bf16_supported()}"
    )


def metric_check(metric: str, a: float, b: float, ppl_rtol: float, acc_atol: float) -> tuple[float, str, bool]:
    """(difference, tolerance, within it) of one metric's CPU value `a` and GPU value `b`."""
    if metric in POINT_METRICS:
        diff = abs(b - a) * 100
        return diff, f"<= {acc_atol:g} points", diff <= acc_atol
    if metric in EXACT_METRICS:
        return float(a != b), "equal", a == b
    diff = abs(b - a) / abs(a) if a else float(b != a)
    return diff, f"<= {ppl_rtol:g} relative", diff <= ppl_rtol


def same_value(a: object, b: object) -> bool:
    """Equal as numbers where both are (an outer merge turns the int columns of one side into floats), else as
    text; two empty cells are equal."""
    if pd.isna(a) or pd.isna(b):
        return bool(pd.isna(a) and pd.isna(b))
    try:
        return float(a) == float(b)
    except (TypeError, ValueError):
        return str(a) == str(b)


def compare_runs(cpu: pd.DataFrame, gpu: pd.DataFrame, ppl_rtol: float = 0.05, acc_atol: float = 5.0) -> pd.DataFrame:
    """Every compared value of two all.csv tables, one row each: ROW_KEY, `what` (the metric or variant column),
    `cpu`, `gpu`, `difference` (points for POINT_METRICS, relative for RELATIVE_METRICS and unknown metrics, 0/1
    for EXACT_METRICS and VARIANT_COLUMNS), `tolerance`, `ok`. A row of one table missing from the other comes
    back with the absent side empty and ok False. MACHINE_METRICS rows are left out (they measure the machine)."""
    cpu = cpu[~cpu["metric"].isin(MACHINE_METRICS)]
    gpu = gpu[~gpu["metric"].isin(MACHINE_METRICS)]
    merged = cpu.merge(gpu, on=ROW_KEY, how="outer", suffixes=("_cpu", "_gpu"), indicator=True)
    out = []
    for _, row in merged.iterrows():
        key = {k: row[k] for k in ROW_KEY}
        a, b = row["value_cpu"], row["value_gpu"]
        if row["_merge"] != "both":
            side = "GPU" if row["_merge"] == "left_only" else "CPU"
            out.append({**key, "what": f"{row['metric']} (missing in the {side} run)", "cpu": a, "gpu": b,
                        "difference": None, "tolerance": "present", "ok": False})
            continue
        diff, tolerance, ok = metric_check(row["metric"], float(a), float(b), ppl_rtol, acc_atol)
        out.append({**key, "what": row["metric"], "cpu": float(a), "gpu": float(b), "difference": diff,
                    "tolerance": tolerance, "ok": ok})
        if row["metric"] == "perplexity":  # one row per variant: the variant's own columns
            for column in VARIANT_COLUMNS:
                a, b = row[f"{column}_cpu"], row[f"{column}_gpu"]
                same = same_value(a, b)
                out.append({**key, "what": column, "cpu": a, "gpu": b, "difference": float(not same),
                            "tolerance": "equal", "ok": same})
    return pd.DataFrame(out, columns=[*ROW_KEY, "what", "cpu", "gpu", "difference", "tolerance", "ok"])


def phase_times(workdir: Path) -> pd.DataFrame:
    """Per rule (from the benchmark TSVs) with its phase: jobs, wall s, max RSS MB, CPU s."""
    table = rule_table(workdir)
    phase_of = {rule: phase for phase, rules in PHASES.items() for rule in rules}
    rows = [
        {
            "phase": phase_of.get(rule, "other"),
            "rule": rule,
            "jobs": int(e["jobs"]),
            "wall_s": e["s"],
            "max_rss_mb": e["max_rss"],
            "cpu_s": e["cpu_s"],
        }
        for rule, e in table.items()
    ]
    order = {phase: i for i, phase in enumerate([*PHASES, "other"])}
    frame = pd.DataFrame(rows, columns=["phase", "rule", "jobs", "wall_s", "max_rss_mb", "cpu_s"])
    return frame.sort_values(["phase", "rule"], key=lambda s: s.map(order) if s.name == "phase" else s)


def run_workflow(workdir: Path, settings: dict, cores: int, timeout: float, extra: tuple[str, ...] = ()) -> float:
    """config.yaml (data mirror made absolute) with `settings` on top, run in `workdir`; seconds taken. Raises
    subprocess.TimeoutExpired (after stopping Snakemake) or CalledProcessError; the output is in snakemake.out."""
    config = scratch_config(workdir)
    data = yaml.safe_load(config.read_text())
    for key, value in settings.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(REPO / "Snakefile"),
        "--directory",
        str(workdir),
        "--configfile",
        str(config),
        "--cores",
        str(cores),
        *extra,
    ]
    start = time.perf_counter()
    with (workdir / "snakemake.out").open("a") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        try:
            returncode = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.terminate()
            proc.wait(timeout=60)
            raise
    if returncode != 0:
        raise subprocess.CalledProcessError(returncode, cmd)
    return time.perf_counter() - start


def markdown(frame: pd.DataFrame, floats: str = "{:.3g}") -> str:
    cells = frame.map(lambda v: floats.format(v) if isinstance(v, float) else ("" if v is None else str(v)))
    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(row) + " |" for row in cells.itertuples(index=False)]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-csv", type=Path, help="all.csv of a CPU run of the embedded default to compare with")
    parser.add_argument("--run-cpu", action="store_true", help="run the CPU reference first (device: cpu)")
    parser.add_argument("--ppl-rtol", type=float, default=0.05, help="perplexity: relative tolerance")
    parser.add_argument("--acc-atol", type=float, default=5.0, help="accuracy-like fractions: tolerance in points")
    parser.add_argument("--timeout", type=float, default=600, help="seconds for the GPU run (default 600)")
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--gpu-jobs", type=int, default=1,
                        help="model-running jobs sharing the GPU at once (default 1: each rule's time is its own)")
    parser.add_argument("--keep", type=Path, help="scratch folder (default: a new temp folder, kept)")
    args = parser.parse_args()
    if args.cpu_csv is not None and not args.cpu_csv.is_file():
        print(f"gpu_check: --cpu-csv {str(args.cpu_csv)!r} is not a file", file=sys.stderr)
        return 2
    refusal = cuda_refusal()
    if refusal:
        print(refusal, file=sys.stderr)
        return 2
    scratch = args.keep or Path(tempfile.mkdtemp(prefix="streamline-gpu-check-"))
    gpu_dir, cpu_dir = scratch / "gpu", scratch / "cpu"
    gpu_dir.mkdir(parents=True, exist_ok=True)
    print(f"GPU: {gpu_description()}\nCPU: {cpu_description()}\nscratch: {scratch}")

    cpu_csv = args.cpu_csv
    if args.run_cpu:
        cpu_dir.mkdir(exist_ok=True)
        seconds = run_workflow(cpu_dir, {"device": "cpu"}, args.cores, timeout=24 * 3600)
        print(f"CPU reference run (device: cpu, dtype: auto): {seconds:.0f} s")
        cpu_csv = cpu_dir / ALL_CSV

    gpu_settings = {"device": "cuda", "dtype": "bfloat16", "resources": {"gpu": True}}
    try:
        seconds = run_workflow(gpu_dir, gpu_settings, args.cores, args.timeout, ("--resources", f"gpu={args.gpu_jobs}"))
    except subprocess.TimeoutExpired:
        print(
            f"gpu_check: the GPU run did not finish in {args.timeout:.0f} s (per-rule times so far below; "
            f"log: {gpu_dir / 'snakemake.out'})",
            file=sys.stderr,
        )
        print(markdown(phase_times(gpu_dir)))
        return 1
    except subprocess.CalledProcessError:
        print(f"gpu_check: the GPU run failed; see {gpu_dir / 'snakemake.out'}", file=sys.stderr)
        return 1
    print(f"\nGPU run (device: cuda, dtype: bfloat16, {args.gpu_jobs} model job(s) on the GPU at a time): {seconds:.0f} s\n")
    times = phase_times(gpu_dir)
    print(markdown(times, "{:.1f}"))
    print(
        "\n" + markdown(times.groupby("phase", sort=False)[["jobs", "wall_s", "cpu_s"]].sum().reset_index(), "{:.1f}")
    )
    gpu = pd.read_csv(gpu_dir / ALL_CSV)
    machine = gpu[gpu["metric"].isin(MACHINE_METRICS)].groupby("metric")["value"].agg(["min", "median", "max"])
    print("\nmachine metrics of the GPU run (all.csv):\n" + markdown(machine.reset_index(), "{:.4g}"))
    if cpu_csv is None:
        print("\nno CPU all.csv given (--cpu-csv or --run-cpu): nothing compared")
        return 0
    compared = compare_runs(pd.read_csv(cpu_csv), gpu, args.ppl_rtol, args.acc_atol)
    compared.to_csv(scratch / "comparison.csv", index=False)
    bad = compared[~compared["ok"]]
    print(
        f"\ncompared with {cpu_csv}: {len(compared)} values, {len(bad)} outside tolerance "
        f"(perplexity <= {args.ppl_rtol:g} relative, accuracy <= {args.acc_atol:g} points); "
        f"all in {scratch / 'comparison.csv'}"
    )
    if len(bad):
        print(markdown(bad.drop(columns=["ok"])))
    return 1 if len(bad) else 0


if __name__ == "__main__":
    sys.exit(main())
