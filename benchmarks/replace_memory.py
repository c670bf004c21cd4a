"""Replacement training peak RSS with 8x more training tokens / with 1x (target < 1.10).

Each size runs in its own process (peak RSS is per process), on the embedded default with the `ffn` kind.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

SCRIPT = """
import json, sys, torch
sys.path.insert(0, {bench!r})
from _common import DTYPE, calibration_ids, dense_checkpoint
from streamline.healing.heal import run_healing
from streamline.healing.training import TrainConfig
from transformers import AutoTokenizer
dense = dense_checkpoint()
ids = calibration_ids(AutoTokenizer.from_pretrained(dense), {samples} + 8, {seq_len}, seed=1)
plan = {{"start_layer": 10, "num_layers_removed": 10, "removed_layers": list(range(10, 20))}}
stats = run_healing(dense, plan, "ffn", ids[:{samples}], ids[{samples}:], {out!r},
    cfg=TrainConfig(epochs=1, batch_size=8, progress=False), shard_sequences=8, device="cpu",
    compute_dtype=DTYPE)
print(json.dumps({{"peak_rss_mb": stats["peak_rss_mb"], "tokens": stats["tokens_seen"]}}))
"""


def run(samples: int, seq_len: int) -> dict:
    with tempfile.TemporaryDirectory() as out:
        code = SCRIPT.format(bench=str(Path(__file__).parent), samples=samples, seq_len=seq_len, out=out)
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(samples: int = 16, seq_len: int = 256) -> None:
    small = run(samples, seq_len)
    large = run(8 * samples, seq_len)
    print(f"1x: {small['tokens']} tokens, peak RSS {small['peak_rss_mb']:.0f} MB")
    print(f"8x: {large['tokens']} tokens, peak RSS {large['peak_rss_mb']:.0f} MB")
    print(f"peak RSS 8x / 1x = {large['peak_rss_mb'] / small['peak_rss_mb']:.3f}  (target < 1.10)")


if __name__ == "__main__":
    main()
