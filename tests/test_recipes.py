"""Issue 25: `training.recipe` -- each official loop against a transcription of the official code's loop in this file
(not our schedule or loop functions), the bidirectional `layer` against a decoder layer called without a mask, and
what each recipe gives each kind."""

from __future__ import annotations

import copy
import itertools
import math

import pytest
import torch

from streamline.acquisition.families import standalone_forward
from streamline.healing import kinds as healing_kinds
from streamline.healing import recipes
from streamline.healing.training import TrainConfig, fit

TRAINING = {  # a `training` section as the workflow passes it (schema defaults)
    "dataset": "wikitext2",
    "samples": 64,
    "val_samples": 16,
    "seq_len": 512,
    "epochs": 5,
    "batch_size": 8,
    "lr": 2e-4,
    "weight_decay": 1e-3,
    "warmup_ratio": 0.1,
    "seed": 0,
}


def toy_batches(count: int, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    target = torch.randn(6, 6, generator=generator)
    batches = []
    for _ in range(count):
        x = torch.randn(4, 6, generator=generator)
        batches.append((x, x @ target + 3.0))  # large targets: the clipping bites
    return batches


def run_ours(module: torch.nn.Module, batches, cfg: TrainConfig) -> list[float]:
    """training.fit on the fixed batch order; validation falls every epoch, so the last epoch is kept (as the
    official MSE loop's aliased state_dict keeps it)."""
    calls = iter(range(10**6))

    def epoch_batches(_generator):
        for x, y in batches:
            yield torch.nn.functional.mse_loss(module(x), y), x.numel()

    fit(list(module.parameters()), epoch_batches, len(batches), lambda: -float(next(calls)), cfg, "test")
    return [p.detach().clone() for p in module.parameters()]


def official_lambda(step, warmup, total, lr, min_lr):
    """LLM_Streamline/scheduler.py:53-62 as written there (num_cycles 0.5)."""
    if step < warmup:
        return float(step) / float(max(1, warmup))
    progress = float(step - warmup) / float(max(1, total - warmup))
    _lambda = max(0, 0.5 * (1.0 + math.cos(math.pi * 0.5 * 2.0 * progress)))
    return (min_lr + _lambda * (lr - min_lr)) / lr


def test_official_mse_loop_is_train_lightweightnetwork(tmp_path):
    """train_lightweightnetwork.py:211-258: loss / 16, one step per 16 micro-batches (a partial group dropped by the
    next epoch's zero_grad), clip 5, the scheduler stepped with the optimizer, sized by len(loader) x epochs."""
    batches, epochs, lr, wd, min_lr, accumulation = toy_batches(40), 2, 0.05, 1e-3, 5e-3, 16
    official = torch.nn.Linear(6, 6)
    ours = copy.deepcopy(official)
    optimizer = torch.optim.AdamW(official.parameters(), lr=lr, weight_decay=wd)
    warmup, total = len(batches) * epochs * 0.01 * 0.5, len(batches) * epochs * 0.5
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: official_lambda(s, warmup, total, lr, min_lr))
    for _ in range(epochs):
        optimizer.zero_grad()
        for step, (x, y) in enumerate(batches):
            loss = torch.nn.functional.mse_loss(official(x), y) / accumulation
            loss.backward()
            if (step + 1) % accumulation == 0:
                torch.nn.utils.clip_grad_norm_(official.parameters(), max_norm=5)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
    training = {**TRAINING, "epochs": epochs, "lr": lr, "weight_decay": wd, "recipe": "official"}
    cfg = recipes.train_config(healing_kinds.get("layer").official, training)
    cfg = TrainConfig(**{**cfg.__dict__, "min_lr": min_lr, "progress": False})
    assert (cfg.accumulation, cfg.max_grad_norm, cfg.attention) == (16, 5.0, "bidirectional")
    for got, want in zip(run_ours(ours, batches, cfg), official.parameters()):
        torch.testing.assert_close(got, want.detach(), rtol=1e-6, atol=1e-7)


def test_official_mlp_example_loop_is_its_train_py():
    """examples/mlp_mseloss_train_without_memory_issue/train.py:22,74-104 under accelerate: loss / 2, the optimizer
    steps every 2nd micro-batch and at the loader's end, the scheduler every micro-batch, clip 1.0 (its 4gpu.yaml)."""
    batches, lr, wd, accumulation = toy_batches(25, seed=1), 0.05, 1e-3, 2
    official = torch.nn.Linear(6, 6)
    ours = copy.deepcopy(official)
    optimizer = torch.optim.AdamW(official.parameters(), lr=lr, weight_decay=wd, betas=(0.9, 0.95))
    warmup, total = len(batches) * 0.03, len(batches)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: official_lambda(s, warmup, total, lr, 5e-6))
    for step, (x, y) in enumerate(batches):
        (torch.nn.functional.mse_loss(official(x), y) / accumulation).backward()
        if (step + 1) % accumulation == 0 or step == len(batches) - 1:  # accelerate syncs at the loader's end
            torch.nn.utils.clip_grad_norm_(official.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad()
        scheduler.step()
    training = {**TRAINING, "epochs": 1, "lr": lr, "weight_decay": wd, "recipe": "official"}
    cfg = recipes.train_config(healing_kinds.get("ffn").official, training)
    assert (cfg.betas, cfg.min_lr, cfg.warmup_ratio) == ((0.9, 0.95), 5e-6, 0.03)
    for got, want in zip(run_ours(ours, batches, TrainConfig(**{**cfg.__dict__, "progress": False})),
                         official.parameters()):
        torch.testing.assert_close(got, want.detach(), rtol=1e-6, atol=1e-7)


def test_official_last_layers_loop_is_the_trainer_recipe():
    """partial_fine-tuning.py:222-251,284-287: batch 64 by accumulation, 100 warm-up steps from 0 then linear decay to
    0 over the run's steps, clip 1.0, weight decay 0, lr 1e-5, 2 epochs."""
    cfg = recipes.train_config(healing_kinds.get("last-layers").official, {**TRAINING, "recipe": "official"})
    assert (cfg.lr, cfg.epochs, cfg.weight_decay, cfg.max_grad_norm) == (1e-5, 2, 0.0, 1.0)
    assert cfg.accumulation * cfg.batch_size == 64
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([param], lr=cfg.lr)
    from streamline.healing.training import make_scheduler

    scheduler = make_scheduler(optimizer, cfg, steps=300, micro_batches=300 * cfg.accumulation)
    lrs = []
    for _ in range(300):
        lrs.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == 0 and lrs[50] == pytest.approx(cfg.lr * 50 / 100) and lrs[100] == pytest.approx(cfg.lr)
    assert lrs[200] == pytest.approx(cfg.lr * (300 - 200) / (300 - 100))


def test_the_official_streamline_schedule_stays_near_lr():
    """The issue's reading of train_lightweightnetwork.py: with 16 micro-batches per step against a horizon of half the
    micro-batches, the warm-up is ~8% of the steps taken and lr ends near 2e-4, far from min_lr 5e-5."""
    cfg = recipes.train_config("streamline-mse", {**TRAINING, "epochs": 1, "recipe": "official"})
    micro = 3750  # 30,000 sequences / batch 8, the paper's budget
    steps = cfg.optimizer_steps(micro)
    assert steps == 234
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([param], lr=cfg.lr)
    from streamline.healing.training import make_scheduler

    scheduler = make_scheduler(optimizer, cfg, steps, micro)
    lrs = []
    for _ in range(steps):
        lrs.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    warm = sum(1 for a, b in itertools.pairwise(lrs) if b > a)
    assert warm / steps == pytest.approx(0.08, abs=0.01)
    assert 1.9e-4 < lrs[-1] < 2e-4


def test_bidirectional_layer_is_a_decoder_layer_called_without_a_mask(tiny_model):
    """The official MSE training calls LlamaDecoderLayer(config) built from AutoConfig (eager attention under
    transformers 4.45.2) with no attention mask: every position sees every other."""
    hidden = torch.randn(2, 10, 32, generator=torch.Generator().manual_seed(0))
    layer = copy.deepcopy(tiny_model.model.layers[2])
    layer.self_attn.config._attn_implementation = "eager"
    positions = torch.arange(10)[None].expand(2, -1)
    with torch.no_grad():
        official = layer(hidden, attention_mask=None, position_ids=positions,
                         position_embeddings=tiny_model.model.rotary_emb(hidden, positions))
        official = official[0] if isinstance(official, tuple) else official
        ours = standalone_forward(tiny_model, layer, 2, "bidirectional")(hidden)
        causal = standalone_forward(tiny_model, layer, 2, "causal")(hidden)
    torch.testing.assert_close(ours, official, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(causal[:, 0], official[:, 0], atol=1e-3)  # position 0 sees the later tokens
    torch.testing.assert_close(causal[:, -1], official[:, -1], rtol=1e-5, atol=1e-5)  # the last one saw all anyway


def test_what_each_recipe_gives_each_kind():
    project = {name: recipes.train_config(kind.official, TRAINING, kind.trains == "fit")
               for name, kind in healing_kinds.HEALING_KINDS.items() if kind.trains}
    official = {name: recipes.train_config(kind.official, {**TRAINING, "recipe": "official"}, kind.trains == "fit")
                for name, kind in healing_kinds.HEALING_KINDS.items() if kind.trains}
    assert all(cfg == TrainConfig.from_settings(TRAINING) for name, cfg in project.items() if name not in
               ("replaceme", "replaceme-cosine", "linearpatch"))
    assert official["lora"] == project["lora"]  # no official recipe: trained the same
    for name in ("linear", "swiglu", "layer", "swiglu-bestfit", "layer-bestfit"):
        assert (official[name].accumulation, official[name].schedule, official[name].lr) == (16, "cosine_min_lr", 2e-4)
    assert official["lm-loss"].schedule_per == "micro" and official["lm-loss"].min_lr == 5e-5
    assert official["replaceme"] == project["replaceme"] == TrainConfig(batch_size=8, seed=0)
    windows = {name: recipes.windows(healing_kinds.get(name).official, {**TRAINING, "recipe": "official"})
               for name in ("replaceme", "replaceme-cosine", "linearpatch", "layer")}
    assert windows["replaceme"] == windows["replaceme-cosine"] == recipes.Windows("wikitext2", 8000, 1024, True)
    assert windows["linearpatch"] == recipes.Windows("wikitext2", 128, 2048, True)
    assert windows["layer"] == recipes.Windows("wikitext2", 64, 512) == recipes.windows(None, TRAINING)
    # where the offline text holds fewer windows: as many as fit before the validation part
    assert windows["replaceme"].count(700_000, 16) == (700_000 - 16 * 1024) // 1024
    assert windows["replaceme"].count(10**8, 16) == 8000 and windows["layer"].count(10, 16) == 64
    with pytest.raises(ValueError, match="training.recipe 'paper' is unknown; allowed: project, official"):
        recipes.train_config("streamline-mse", {**TRAINING, "recipe": "paper"})


def test_a_kind_naming_an_unknown_official_recipe_fails_at_registration(monkeypatch):
    monkeypatch.setattr(healing_kinds, "HEALING_KINDS", dict(healing_kinds.HEALING_KINDS))
    with pytest.raises(ValueError, match="healing kind 'x': official 'nope' is unknown; allowed: streamline-mse"):
        healing_kinds.register(healing_kinds.HealingKind("x", module="ffn", trains="pairs", official="nope"))
    with pytest.raises(ValueError, match="official 'replaceme-calibration' is a calibration size for fits only"):
        healing_kinds.register(healing_kinds.HealingKind("x", module="ffn", trains="pairs",
                                                         official="replaceme-calibration"))
