"""Shared-context multiple-choice scoring against the harness's own path (issue 22, item 3; target >= 1.8x).

Per default task, the accuracy step's work as `steps.accuracy_step` does it (the harness run with the PPL store,
then the PPL scores), once with `evaluation.scorer: shared` and once with `harness`, on the same model object in
one process, interleaved (harness-shared, then shared-harness, ...), so contention from other work on the machine
hits both alike. Reported per task and for the default evaluation as a whole (its tasks summed):

- the work each path fed the model, counted at the model's forward (contention-free): token positions including
  padding, and the ratio harness / shared; the unpadded tokens (`tokens`: the rows the harness builds vs the packed
  groups), i.e. the speed-up if the cost were proportional to the tokens fed;
- the median over the repeats of the ratio of wall time and of process CPU time (user + system of all threads;
  less sensitive to other processes than wall time, but spin-waiting threads count), after an untimed warm-up of
  both paths on 2 examples (which also runs the shared scorer's once-per-model layout probe);
- checks: the largest per-choice log-likelihood difference between the paths, whether every is_greedy flag is the
  same, the examples whose acc or acc_norm differs, whether acc_ppl is identical, and with --control the same
  count for the harness against itself at half the batch size (its own rounding noise).

    .venv/bin/python benchmarks/mc_scoring.py [--limit 50] [--repeats 2] [--dtype auto|float32|bfloat16]
        [--tasks hellaswag_mirror ...] [--threads N] [--emulate-avx2] [--control]

`--emulate-avx2` re-runs the script with torch, oneDNN and MKL capped at AVX2 (as `default_run.py --emulate-avx2`;
dtype auto -> float32), the kernels an AVX2-only CPU would run.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import torch
from _common import DEFAULT_MIRROR, dense_checkpoint
from default_run import AVX2_ENV, cpu_description

from streamline.acquisition.models import compute_dtype, dtype_name, load_model
from streamline.evaluation import choice_nll
from streamline.evaluation import harness as evaluate
from streamline.workflow.config_schema import defaults

TASKS = ["hellaswag_mirror", "piqa_mirror", "arc_easy_mirror", "winogrande_mirror"]  # config.yaml's default


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
    _, ppl_metrics = choice_nll.task_ppl_records(
        model, lm, choice_nll.load_task(manager, task), samples[task], batch_size=batch_size, captured=store
    )
    metrics[task]["metrics"].update(ppl_metrics)  # acc_ppl, gold_logprob
    return metrics[task], samples[task], raw[task]


def count_forwards(model: torch.nn.Module, counter: Counter) -> None:
    """Add each forward's input shape to `counter`: forwards, positions (B x T, padding included)."""

    def hook(module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is not None:
            counter["forwards"] += 1
            counter["positions"] += ids.shape[0] * ids.shape[1]

    model.register_forward_pre_hook(hook, with_kwargs=True)


def flips(a: list[dict], b: list[dict], metric: str) -> int:
    """Examples whose `metric` (acc, acc_norm) differs between two runs of the same examples."""
    return sum(x[metric] != y[metric] for x, y in zip(a, b))


def ratio(a: list[float], b: list[float]) -> float:
    return statistics.median(x / y for x, y in zip(a, b))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=50, help="examples per task")
    parser.add_argument("--repeats", type=int, default=2, help="timed pairs per task (orders alternate)")
    parser.add_argument("--dtype", default="auto", help="auto (the default run's: bf16 with native bf16), float32")
    parser.add_argument("--tasks", nargs="+", default=TASKS, help="tasks (default: the default evaluation's)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--emulate-avx2", action="store_true", help="cap torch/oneDNN/MKL at AVX2")
    parser.add_argument("--checkpoint", type=Path, default=None, help="SmolLM2-135M checkpoint folder")
    parser.add_argument("--control", action="store_true", help="also the harness path at half the batch size")
    args = parser.parse_args()
    if args.emulate_avx2 and any(os.environ.get(k) != v for k, v in AVX2_ENV.items()):
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **AVX2_ENV})  # before torch runs
    logging.disable(logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)

    dtype = compute_dtype(args.dtype, "cpu")
    model, tokenizer = load_model(args.checkpoint or dense_checkpoint(), dtype)
    batch_size = defaults("evaluation")["batch_size"]
    manager = evaluate.task_manager([], DEFAULT_MIRROR)
    counters = {"harness": Counter(), "shared": Counter()}
    current = Counter()
    count_forwards(model, current)
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
    print(f"CPU: {cpu_description()}; emulated AVX2-only: {args.emulate_avx2}")
    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}; dtype {dtype_name(dtype)}; "
        f"limit {args.limit}; batch_size {batch_size}; repeats {args.repeats}; commit {commit}",
        flush=True,
    )

    # Untimed warm-up of both paths (first-call allocations and kernel set-up; the shared scorer's layout probe,
    # which runs once per model and so once per accuracy job, here on the first task's rows)
    for scorer, (lm, store) in lms.items():
        current.clear()
        accuracy_work(model, tokenizer, lm, store, args.tasks[0], 2, manager, batch_size)
        if scorer == "shared":
            print(f"warm-up, 2 examples of {args.tasks[0]} incl. the probe: {dict(current)}", flush=True)

    totals = {s: {"wall": [0.0] * args.repeats, "cpu": [0.0] * args.repeats} for s in lms}
    tokens_total = Counter()
    worst = 0.0
    for task in args.tasks:
        times = {s: {"wall": [], "cpu": []} for s in lms}
        work = {s: Counter() for s in lms}
        results = {}
        for rep in range(args.repeats):
            for scorer in ("harness", "shared") if rep % 2 == 0 else ("shared", "harness"):
                lm, store = lms[scorer]
                current.clear()
                wall, cpu = time.perf_counter(), time.process_time()
                results[scorer] = accuracy_work(model, tokenizer, lm, store, task, args.limit, manager, batch_size)
                wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                times[scorer]["wall"].append(wall)
                times[scorer]["cpu"].append(cpu)
                totals[scorer]["wall"][rep] += wall
                totals[scorer]["cpu"][rep] += cpu
                work[scorer] = Counter(current)  # the same every repeat
        for scorer in lms:
            counters[scorer].update(work[scorer])
        (h_metrics, h_samples, _), (s_metrics, s_samples, s_raw) = results["harness"], results["shared"]
        pairs = [(h, s) for hs, ss in zip(h_samples, s_samples) for h, s in zip(hs["resps"], ss["resps"])]
        diff = max(abs(h[0][0] - s[0][0]) for h, s in pairs)
        worst = max(worst, diff)
        greedy_same = all(h[0][1] == s[0][1] for h, s in pairs)
        same = {m: flips(h_samples, s_samples, m) for m in ("acc", "acc_norm") if m in h_samples[0]}
        same["acc_ppl"] = h_metrics["metrics"]["acc_ppl"]["value"] == s_metrics["metrics"]["acc_ppl"]["value"]
        gold_diff = abs(h_metrics["metrics"]["gold_logprob"]["value"] - s_metrics["metrics"]["gold_logprob"]["value"])
        if args.control:  # the harness against itself at another batch size: its own rounding noise
            lm, store = lms_control
            _, c_samples, _ = accuracy_work(model, tokenizer, lm, store, task, args.limit, manager, batch_size // 2)
            control = {m: flips(h_samples, c_samples, m) for m in ("acc", "acc_norm") if m in h_samples[0]}
            print(
                f"{task:18s} harness batch {batch_size} vs {batch_size // 2}: examples whose metric differs {control}"
            )
        paths = s_raw["scorer"]
        tokens = Counter()
        for p in paths:
            tokens.update({"harness": p.get("harness_tokens", 0), "shared": p.get("tokens", 0)})
        tokens_total.update(tokens)
        h_cpu, s_cpu = statistics.median(times["harness"]["cpu"]), statistics.median(times["shared"]["cpu"])
        print(
            f"{task:18s} path {'/'.join(p['path'] for p in paths)}  "
            f"positions fed x{work['harness']['positions'] / max(1, work['shared']['positions']):.2f} "
            f"({work['harness']['positions']} in {work['harness']['forwards']} forwards vs "
            f"{work['shared']['positions']} in {work['shared']['forwards']})  "
            f"tokens x{tokens['harness'] / max(1, tokens['shared']):.2f}  "
            f"speed-up wall x{ratio(times['harness']['wall'], times['shared']['wall']):.2f} "
            f"cpu x{ratio(times['harness']['cpu'], times['shared']['cpu']):.2f}  "
            f"(cpu s harness {h_cpu:.1f} shared {s_cpu:.1f})  max |dloglik| {diff:.2e}  is_greedy same {greedy_same}  "
            f"examples whose metric differs {same} (acc_ppl: mean identical)  |d gold_logprob| {gold_diff:.1e}",
            flush=True,
        )
    h_pos, s_pos = counters["harness"]["positions"], counters["shared"]["positions"]
    print(
        f"{'all tasks summed':18s} positions fed x{h_pos / max(1, s_pos):.2f}  "
        f"tokens x{tokens_total['harness'] / max(1, tokens_total['shared']):.2f}  "
        f"speed-up wall x{ratio(totals['harness']['wall'], totals['shared']['wall']):.2f} "
        f"cpu x{ratio(totals['harness']['cpu'], totals['shared']['cpu']):.2f}  "
        f"(cpu s harness {statistics.median(totals['harness']['cpu']):.1f} "
        f"shared {statistics.median(totals['shared']['cpu']):.1f})  max |dloglik| {worst:.2e}"
    )


if __name__ == "__main__":
    main()
