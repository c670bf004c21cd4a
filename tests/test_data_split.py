"""Training and validation windows come from disjoint parts of the text (no validation token is trained on)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import TEXT

from streamline.atomic import read_json
from streamline.token_windows import split_windows, token_ids
from streamline.workflow.config_schema import defaults
from streamline.workflow.record_steps import prune_step
from streamline.workflow.steps import replace_step


def covered(starts: list[int], seq_len: int) -> set[int]:
    return {p for s in starts for p in range(s, s + seq_len)}


def test_windows_never_overlap_by_position():
    # Token ids 0..999 equal their positions, so each window's values are its positions (an independent check).
    ids = torch.arange(1000)
    split = split_windows(ids, train_samples=50, val_samples=4, seq_len=16, seed=3)
    # The validation tail is 4 x 16 = 64 tokens: positions 936..999, cut into consecutive windows.
    assert split["val_starts"] == [936, 952, 968, 984]
    assert torch.equal(split["val"], torch.arange(936, 1000).view(4, 16))
    assert split["train"].shape == (50, 16)
    for start, window in zip(split["train_starts"], split["train"]):
        assert torch.equal(window, torch.arange(start, start + 16))
    train_positions = covered(split["train_starts"], 16)
    assert max(train_positions) < 936
    assert train_positions.isdisjoint(covered(split["val_starts"], 16))
    assert set(split["val"].flatten().tolist()).isdisjoint(split["train"].flatten().tolist())
    assert split["record"] == {
        "text_tokens": 1000,
        "train_tokens": 936,
        "val_tokens": 64,
        "train_windows": 50,
        "val_windows": 4,
        "seq_len": 16,
        "val_first_token": 936,
    }


def test_seed_moves_only_the_training_windows():
    ids = torch.arange(500)
    a, b = (split_windows(ids, 8, 2, 10, seed) for seed in (0, 1))
    assert torch.equal(a["val"], b["val"]) and a["train_starts"] != b["train_starts"]
    assert split_windows(ids, 8, 2, 10, 0)["train_starts"] == a["train_starts"]


def test_real_tokenizer_split_by_position(tokenizer):
    ids = token_ids(tokenizer, TEXT)
    split = split_windows(ids, 12, 3, 20, 0)
    boundary = ids.numel() - 3 * 20
    assert all(s + 20 <= boundary for s in split["train_starts"]) and split["val_starts"][0] == boundary
    assert covered(split["train_starts"], 20).isdisjoint(covered(split["val_starts"], 20))
    for start, window in zip(split["val_starts"], split["val"]):
        assert torch.equal(window, ids[start : start + 20])


def test_text_too_short_for_both_parts():
    with pytest.raises(
        ValueError,
        match=r"training text has 100 tokens: the validation tail takes val_samples x seq_len = 6 x 16 = 96, "
        r"leaving 4 for training, fewer than one training sequence of seq_len \+ 1 = 17; use more text, fewer "
        r"val_samples or a shorter seq_len",
    ):
        split_windows(torch.arange(100), 4, 6, 16, 0)
    split_windows(torch.arange(100), 4, 5, 16, 0)  # 80 + 20 tokens: one training window fits


def test_replace_step_records_the_split(tiny_checkpoint, tokenizer, tmp_path):
    """An l2 plan healed with `linear`: compressed.json states each split's tokens and windows."""
    text_file = tmp_path / "train.txt"
    text_file.write_text(TEXT, encoding="utf-8")
    out = tmp_path / "last-n-linear" / "l2"
    plan = prune_step(scores=None, manifest_path=tiny_checkpoint / "manifest.json", sparsity=None, layers=2,
                      healing="linear", method="last-n", settings={}, sparsity_of="layers", plan_path=out / "plan.json")
    assert plan["removed_layers"] == [3, 4] and plan["target_layers"] == 2
    training = {
        **defaults("training"),
        "dataset": str(text_file), "samples": 6, "val_samples": 2, "seq_len": 16, "epochs": 1, "batch_size": 2,
        "lr": 1e-3, "weight_decay": 0.0, "warmup_ratio": 0.0, "seed": 0, "shard_sequences": 4,
    }
    run = {"dtype": "float32", "device": "cpu", "data_mirror": None}
    replace_step(model_dir=tiny_checkpoint, plan_path=out / "plan.json", healing="linear", training=training, lora={},
                 run=run, marker_path=out / "compressed.json", curve_path=out / "train_log.csv", pair_cache=None)
    record = read_json(out / "compressed.json")
    total = token_ids(tokenizer, TEXT).numel()
    assert record["data_split"] == {
        "dataset": str(text_file),
        "text_tokens": total,
        "train_tokens": total - 32,
        "val_tokens": 32,
        "train_windows": 6,
        "val_windows": 2,
        "seq_len": 16,
        "val_first_token": total - 32,
    }
    assert json.loads((out / "plan.json").read_text())["sparsity_of"] == "layers"
