"""The whole DAG on a non-Llama family (issue 15): a tiny random Gemma3 (sliding/full layers, norms on both sides
of the MLP, per-layer-type rotary) through acquisition, importance, pruning, every replacement kind, LoRA and
evaluation into all.csv. tests/test_families.py checks each family's pieces; this checks the rules use them."""

from __future__ import annotations

import json
import math
import subprocess

import pandas as pd
import pytest
import yaml
from conftest import TINY_RUN, experiment_dir, make_tokenizer, save_tiny_checkpoint, snakemake_cmd, variant_dir
from transformers import AutoModelForCausalLM, Gemma3ForCausalLM, Gemma3TextConfig

KINDS = ["none", "linear", "ffn", "swiglu", "layer", "lora"]


@pytest.mark.slow
def test_whole_dag_on_a_tiny_gemma3(tmp_path):
    tokenizer = make_tokenizer()
    config = Gemma3TextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=6,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, sliding_window=8, query_pre_attn_scalar=8,
        layer_types=["sliding_attention", "full_attention"] * 3, max_position_embeddings=1024,
    )
    source = save_tiny_checkpoint(Gemma3ForCausalLM(config).eval(), tokenizer, tmp_path / "gemma-src")
    settings = {
        "models": {"tiny": {"local": str(source)}},
        **TINY_RUN,
        "importance": {"metrics": ["cosine"]},
        "methods": ["streamline"],
        "healing": ["replacement", "lora"], "replacements": KINDS[:-1],
        "training": {"samples": 8, "val_samples": 4, "seq_len": 32, "epochs": 1, "batch_size": 4},
        "evaluation": {"tasks": ["piqa_mirror"], "limit": 4, "batch_size": 4},
    }
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(settings))
    target = experiment_dir(tmp_path) / "tables/all.csv"
    result = subprocess.run(snakemake_cmd(tmp_path, config_path, "--cores", "2", str(target.relative_to(tmp_path))), check=False,
                            capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]

    table = pd.read_csv(target)
    ppl = table[table["metric"] == "perplexity"]
    assert sorted(ppl.loc[ppl["method"] == "streamline", "healing"]) == sorted(KINDS)
    assert (ppl["method"] == "dense").sum() == 1
    assert all(math.isfinite(v) for v in ppl["value"])
    # a decoder-layer replacement is a stock Gemma3 checkpoint with the window's layers replaced by one layer
    folder = variant_dir(tmp_path, "tiny", "streamline-layer/s0.3")
    plan = json.loads((folder / "plan.json").read_text())
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert type(model).__name__ == "Gemma3ForCausalLM"
    assert model.config.num_hidden_layers == 6 - len(plan["removed_layers"]) + 1
    assert len(model.config.layer_types) == model.config.num_hidden_layers
