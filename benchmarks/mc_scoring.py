"""Shared-context multiple-choice scoring against the harness's own path (issue 22, item 3; target >= 1.8x).

Per default task, the accuracy step's work as `steps.accuracy_step` does it (the harness run with the PPL store,
then the PPL scores), once with `evaluation.scorer: shared` and once with `harness`, on the same model object in
one process, interleaved (harness-shared, then shared-harness, ...), so contention from other work on the machine
hits both alike. Reported per task and for the default evaluation as a whole (its four tasks summed): the ratio of
wall time and of process CPU time (user + system of all threads; less sensitive to other processes than wall
time), the median over the repeats, and the token ratio (tokens the harness feeds / tokens the packed layout
feeds: the speed-up if the cost were proportional to the tokens fed). Checked on the way: the largest per-choice log-likelihood
difference between the paths, the examples whose acc or acc_norm differs, whether acc_ppl is identical, and
with --control the same count for the harness against itself at half the batch size (its own rounding noise).

    .venv/bin/python benchmarks/mc_scoring.py [--limit 50] [--repeats 2] [--dtype auto|float32|bfloat16] [--control]
"""

from __future__ import annotations

import argparse
import logging
import platform
import statistics
import subprocess
import time
from pathlib import Path

import torch
from _common import DEFAULT_MIRROR, dense_checkpoint

from streamline import choice_nll, evaluate
from streamline.config_schema import defaults
from streamline.models import compute_dtype, dtype_name, load_model

TASKS = ["hellaswag_mirror", "piqa_mirror", "arc_easy_mirror", "winogrande_mirror"]  # config.yaml's default


def cpu_flags() -> str:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    flags = sorted({f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f" {f}" in text})
    return " ".join(flags) or platform.processor()


def accuracy_work(model, tokenizer, lm, store, task, limit, manager, batch_size):
    """One task as the accuracy step scores it: (metrics incl. acc_ppl, samples, raw)."""
    store.clear()
    metrics, samples, raw = evaluate.evaluate_tasks(
        model,
        tokenizer,
        [task],
        {task: limit},
        batch_size=batch_size,
        seed=1234,
        manager=manager,
        lm=lm,
        bootstrap_iters=0,
    )
    _, acc_ppl = choice_nll.task_ppl_records(
        model, lm, choice_nll.load_task(manager, task), samples[task], batch_size=batch_size, captured=store
    )
    metrics[task]["metrics"]["acc_ppl"] = acc_ppl
    return metrics[task], samples[task], raw[task]


def flips(a: list[dict], b: list[dict], metric: str) -> int:
    """Examples whose `metric` (acc, acc_norm) differs between two runs of the same examples."""
    return sum(x[metric] != y[metric] for x, y in zip(a, b))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=50, help="examples per task")
    parser.add_argument("--repeats", type=int, default=2, help="timed pairs per task (orders alternate)")
    parser.add_argument("--dtype", default="auto", help="auto (the default run's: bf16 with native bf16), float32")
    parser.add_argument("--checkpoint", type=Path, default=None, help="SmolLM2-135M checkpoint folder")
    parser.add_argument("--control", action="store_true", help="also the harness path at half the batch size")
    args = parser.parse_args()
    logging.disable(logging.WARNING)

    dtype = compute_dtype(args.dtype, "cpu")
    model, tokenizer = load_model(args.checkpoint or dense_checkpoint(), dtype)
    batch_size = defaults("evaluation")["batch_size"]
    manager = evaluate.task_manager([], DEFAULT_MIRROR)
    lms = {}
    for scorer in ("harness", "shared"):
        lm = choice_nll.harness_lm(model, tokenizer, batch_size, scorer)
        lms[scorer] = (lm, choice_nll.capture_input_logprobs(lm))
    if args.control:
        lm = choice_nll.harness_lm(model, tokenizer, batch_size // 2, "harness")
        lms_control = (lm, choice_nll.capture_input_logprobs(lm))
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], check=False, capture_output=True, text=True
    ).stdout.strip()
    print(
        f"CPU flags: {cpu_flags()}; torch threads {torch.get_num_threads()}; dtype {dtype_name(dtype)}; "
        f"limit {args.limit}; batch_size {batch_size}; repeats {args.repeats}; commit {commit}"
    )

    totals = {s: {"wall": [0.0] * args.repeats, "cpu": [0.0] * args.repeats} for s in lms}
    for task in TASKS:
        times = {s: {"wall": [], "cpu": []} for s in lms}
        results = {}
        for rep in range(args.repeats):
            for scorer in ("harness", "shared") if rep % 2 == 0 else ("shared", "harness"):
                lm, store = lms[scorer]
                wall, cpu = time.perf_counter(), time.process_time()
                results[scorer] = accuracy_work(model, tokenizer, lm, store, task, args.limit, manager, batch_size)
                wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                times[scorer]["wall"].append(wall)
                times[scorer]["cpu"].append(cpu)
                totals[scorer]["wall"][rep] += wall
                totals[scorer]["cpu"][rep] += cpu
        (h_metrics, h_samples, _), (s_metrics, s_samples, s_raw) = results["harness"], results["shared"]
        diff = max(
            abs(h[0][0] - s[0][0]) for hs, ss in zip(h_samples, s_samples) for h, s in zip(hs["resps"], ss["resps"])
        )
        greedy_same = all(
            h[0][1] == s[0][1] for hs, ss in zip(h_samples, s_samples) for h, s in zip(hs["resps"], ss["resps"])
        )
        same = {m: flips(h_samples, s_samples, m) for m in ("acc", "acc_norm") if m in h_samples[0]}
        same["acc_ppl"] = h_metrics["metrics"]["acc_ppl"]["value"] == s_metrics["metrics"]["acc_ppl"]["value"]
        if args.control:  # the harness against itself at another batch size: its own rounding noise
            lm, store = lms_control
            _, c_samples, _ = accuracy_work(model, tokenizer, lm, store, task, args.limit, manager, batch_size // 2)
            control = {m: flips(h_samples, c_samples, m) for m in ("acc", "acc_norm") if m in h_samples[0]}
            print(
                f"{task:18s} harness batch {batch_size} vs {batch_size // 2}: examples whose metric differs {control}",
                flush=True,
            )
        paths = s_raw["scorer"]
        tokens = sum(p.get("harness_tokens", 0) for p in paths) / max(1, sum(p.get("tokens", 0) for p in paths))
        wall = statistics.median(h / s for h, s in zip(times["harness"]["wall"], times["shared"]["wall"]))
        cpu = statistics.median(h / s for h, s in zip(times["harness"]["cpu"], times["shared"]["cpu"]))
        h_cpu, s_cpu = statistics.median(times["harness"]["cpu"]), statistics.median(times["shared"]["cpu"])
        print(
            f"{task:18s} path {'/'.join(p['path'] for p in paths):7s} tokens x{tokens:.2f}  "
            f"speed-up wall x{wall:.2f} cpu x{cpu:.2f}  (cpu s harness {h_cpu:.1f} shared {s_cpu:.1f})  "
            f"max |dloglik| {diff:.2e}  is_greedy same {greedy_same}  examples whose metric differs (acc_ppl: "
            f"mean identical) {same}",
            flush=True,
        )
    wall = statistics.median(h / s for h, s in zip(totals["harness"]["wall"], totals["shared"]["wall"]))
    cpu = statistics.median(h / s for h, s in zip(totals["harness"]["cpu"], totals["shared"]["cpu"]))
    print(
        f"{'default evaluation':18s} (4 tasks summed)  speed-up wall x{wall:.2f} cpu x{cpu:.2f}  "
        f"(cpu s harness {statistics.median(totals['harness']['cpu']):.1f} "
        f"shared {statistics.median(totals['shared']['cpu']):.1f})"
    )


if __name__ == "__main__":
    main()
