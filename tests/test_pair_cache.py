"""The hidden-state pair cache: computed once per key, reused bit-identically, never read half-written."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from streamline.healing.pair_cache import COMPLETE, hidden_pairs, pair_key
from streamline.healing.replace import cache_pairs
from streamline.importance.hidden_states import residual_states
from streamline.scratch import PREFIX


def test_pairs_are_computed_once_and_reused(tiny_checkpoint, tiny_model, tmp_path):
    ids = torch.randint(0, 200, (6, 16), generator=torch.Generator().manual_seed(0))
    train, val = ids[:4], ids[4:]
    key = pair_key(tiny_checkpoint, 1, 4, [train, val], torch.float32, "cpu", 2)
    calls = []

    def compute(train_dir, val_dir):
        calls.append(1)
        cache_pairs(tiny_model, train, 1, 4, train_dir, 2)
        cache_pairs(tiny_model, val, 1, 4, val_dir, 2)

    with hidden_pairs(compute, tmp_path / "cache", key) as (train_shards, val_shards, reused):
        assert not reused and len(train_shards) == 2 and len(val_shards) == 1
        first = [load_file(p) for p in train_shards]
    with hidden_pairs(compute, tmp_path / "cache", key) as (train_shards, _, reused):
        assert reused and calls == [1]  # the second job ran no forward pass
        again = [load_file(p) for p in train_shards]
    for a, b in zip(first, again):
        assert torch.equal(a["h_in"], b["h_in"]) and torch.equal(a["h_out"], b["h_out"])
    # independent path: the cached pair of sequence 0 is h_1 and h_4 of a plain forward
    states = residual_states(tiny_model, train[:1], upto=4)
    torch.testing.assert_close(first[0]["h_in"][:1], states[1])
    torch.testing.assert_close(first[0]["h_out"][:1], states[4])
    assert not list((tmp_path / "cache").glob(PREFIX + "*"))  # no staging folder left


def test_key_changes_with_window_tokens_and_dtype(tiny_checkpoint):
    ids = [torch.arange(32).view(2, 16)]
    base = pair_key(tiny_checkpoint, 1, 4, ids, torch.float32, "cpu", 2)
    assert base == pair_key(tiny_checkpoint, 1, 4, [t.clone() for t in ids], torch.float32, "cpu", 2)
    assert base.startswith("w1-4-")
    others = {
        pair_key(tiny_checkpoint, 1, 5, ids, torch.float32, "cpu", 2),
        pair_key(tiny_checkpoint, 1, 4, [ids[0] + 1], torch.float32, "cpu", 2),
        pair_key(tiny_checkpoint, 1, 4, ids, torch.bfloat16, "cpu", 2),
        pair_key(tiny_checkpoint, 1, 4, ids, torch.float32, "cpu", 1),
    }
    assert base not in others and len(others) == 4


def test_a_failed_computation_leaves_no_entry(tmp_path):
    def fail(train_dir, val_dir):
        train_dir.mkdir(parents=True)
        (train_dir / "shard_00000.safetensors").write_bytes(b"partial")
        raise FloatingPointError("overflow")

    with pytest.raises(FloatingPointError), hidden_pairs(fail, tmp_path, "w0-1-abc"):
        pass
    assert not (tmp_path / "w0-1-abc").exists() and not list(tmp_path.glob(PREFIX + "*"))


def test_an_entry_without_its_marker_is_rebuilt(tmp_path):
    (tmp_path / "w0-1-abc" / "train").mkdir(parents=True)  # e.g. copied by hand, half of it
    calls = []

    def compute(train_dir, val_dir):
        calls.append(1)
        for folder in (train_dir, val_dir):
            folder.mkdir(parents=True)
            (folder / "shard_00000.safetensors").write_bytes(b"x")

    with hidden_pairs(compute, tmp_path, "w0-1-abc") as (train_shards, val_shards, reused):
        assert calls == [1] and not reused and len(train_shards) == len(val_shards) == 1
    assert (tmp_path / "w0-1-abc" / COMPLETE).is_file()
