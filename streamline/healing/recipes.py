"""Training recipes: the config's `training.recipe`, a named choice between this project's loop and the official ones.

`project` (the default) trains every healing with the project's loop (training.TrainConfig defaults: one AdamW step
per batch, cosine to 0 after `training.warmup_ratio`, no clipping, a causal `layer`), what works at CPU budgets.
`official` gives each healing kind that names an official recipe (kinds.HealingKind.official) the loop or the
calibration size of its method's official code, below; a kind without one (lora, none) is trained as under
`project`, and its variant key does not change. docs/deviations.md lists what stays different under either recipe
and what each switch measured.

The config's `training` keys keep their meaning under both recipes (lr, weight decay, epochs, batch size, data),
except where an official recipe names its own values: the last-layer fine-tuning of Lu et al. (lr, epochs, weight
decay, batch 64 by accumulation) and the fits' calibration sizes, which belong to other papers than the
replacement's `training` settings.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from streamline.healing.train_config import TrainConfig

RECIPES = ("project", "official")
DEFAULT_RECIPE = "project"  # the schema's `training.recipe` default (tests/test_registry.py checks)


@dataclass(frozen=True)
class Calibration:
    """An official calibration size: `samples` windows of `seq_len` tokens of `dataset` (None: training.dataset),
    cut to the windows the text holds beside the validation part when it holds fewer (calibration_samples)."""

    samples: int
    seq_len: int
    dataset: str | None = None


@dataclass(frozen=True)
class Official:
    """What recipe `official` sets for the kinds that name this entry: TrainConfig fields (`loop`), an effective
    batch reached by accumulating `training.batch_size` micro-batches (`batch`), or a fit's `calibration`.
    `source`: the official files and lines."""

    source: str
    loop: dict[str, Any] = field(default_factory=dict)
    batch: int | None = None
    calibration: Calibration | None = None


# What the two accelerate-launched LLM-Streamline loops share (the MLP example's train.py and train_llmloss.py): AdamW
# betas (0.9, 0.95), the scheduler.py cosine to min_lr stepped every micro-batch (the scheduler is not prepared by
# accelerate, so it is not skipped while accumulating), a partial accumulation stepped at the loader's end,
# DeepSpeed's gradient_clipping 1.0 (4gpu.yaml).
ACCELERATE_LOOP: dict[str, Any] = {
    "betas": (0.9, 0.95),
    "schedule": "cosine_min_lr",
    "schedule_per": "micro",
    "partial_step": True,
    "max_grad_norm": 1.0,
}

OFFICIAL: dict[str, Official] = {
    # train_lightweightnetwork.py:211-219 (AdamW(lr, wd) at default betas; scheduler sized by len(loader) x epochs:
    # warm-up 0.01 x 0.5 of it, horizon 0.5 of it, min_lr args.py:45), 226-258 (loss / 16, one step per 16
    # micro-batches args.py:38, clip 5 at line 244, scheduler stepped with the optimizer, zero_grad at each epoch's
    # start drops a partial accumulation), 166-169 + 234-236 (LlamaDecoderLayer(config) from AutoConfig, called
    # without a mask: eager attention under transformers 4.45.2, i.e. bidirectional).
    "streamline-mse": Official(
        "RUCKBReasoning/LLM-Streamline@adf50ba LLM_Streamline/train_lightweightnetwork.py:166-169,211-258; "
        "LLM_Streamline/scheduler.py:53-62; args.py:38-45",
        loop={
            "accumulation": 16,
            "partial_step": False,
            "max_grad_norm": 5.0,
            "schedule": "cosine_min_lr",
            "min_lr": 5e-5,
            "horizon": 0.5,
            "warmup_ratio": 0.005,  # 0.01 x 0.5 of the micro-batches
            "schedule_per": "step",
            "attention": "bidirectional",
        },
    ),
    # examples/mlp_mseloss_train_without_memory_issue/train.py:22 (accumulate 2 micro-batches), 74-81 (AdamW
    # betas (0.9, 0.95); warm-up 3% of the micro-batches, cosine to min_lr 5e-6 at the last one), 90-104 (the
    # scheduler steps every micro-batch, the optimizer every 2nd); its 4gpu.yaml: DeepSpeed gradient_clipping 1.0.
    "streamline-mlp": Official(
        "RUCKBReasoning/LLM-Streamline@adf50ba examples/mlp_mseloss_train_without_memory_issue/train.py:22,74-104; "
        "examples/mlp_mseloss_train_without_memory_issue/4gpu.yaml:4",
        loop={**ACCELERATE_LOOP, "accumulation": 2, "min_lr": 5e-6, "horizon": 1.0, "warmup_ratio": 0.03},
    ),
    # train_llmloss.py:107 (accelerate, 16 micro-batches per step, a partial one stepped at the loader's end),
    # 135-143 (betas (0.9, 0.95); warm-up 0.01 x len(loader) x epochs, horizon 0.5 x it, min_lr 5e-5), 154-164 (the
    # scheduler steps every micro-batch); 4gpu.yaml:4 (DeepSpeed gradient_clipping 1.0, launched by README.md:47).
    "streamline-lm": Official(
        "RUCKBReasoning/LLM-Streamline@adf50ba LLM_Streamline/train_llmloss.py:107,135-164; 4gpu.yaml:4; README.md:47",
        loop={**ACCELERATE_LOOP, "accumulation": 16, "min_lr": 5e-5, "horizon": 0.5, "warmup_ratio": 0.01},
    ),
    # partial_fine-tuning.py:222-251 (transformers.Trainer: warmup_steps 100, fp16, adamw_torch, max_grad_norm 1.0,
    # default linear decay and weight decay 0) and 284-287 (batch 64 = micro 4 x 16, 2 epochs, lr 1e-5).
    "partial-fine-tuning": Official(
        "yaolu-zjut/Navigation-LLM-layer-pruning@e1f938a partial_fine-tuning.py:57,222-251,284-287",
        loop={
            "lr": 1e-5,
            "epochs": 2,
            "weight_decay": 0.0,
            "max_grad_norm": 1.0,
            "schedule": "linear",
            "warmup_steps": 100,
            "schedule_per": "step",
            "partial_step": True,
        },
        batch=64,
    ),
    # reproduce/Replace_Me_pipeline_{lstsq,cosine}.yaml:3-8 (8000 SlimOrca conversations, max_length 1024); no SlimOrca
    # offline, so the windows come from training.dataset.
    "replaceme-calibration": Official(
        "mts-ai/ReplaceMe@5bb71d9 reproduce/Replace_Me_pipeline_lstsq.yaml:3-8, reproduce/Replace_Me_pipeline_cosine.yaml:3-9",
        calibration=Calibration(8000, 1024),
    ),
    # layer_select.py:24 (128 sequences), scripts/run_llama2-7b.sh:3,7 (wikitext2, training_seqlen 2048),
    # datautils_block.py:13-33 (random windows of the WikiText-2 train split).
    "linearpatch-calibration": Official(
        "chenxinrui-tsinghua/LinearPatch@d1274e8 layer_select.py:24-46; scripts/run_llama2-7b.sh:3,7; "
        "datautils_block.py:13-33",
        calibration=Calibration(128, 2048, "wikitext2"),
    ),
}


def check_recipe(recipe: str) -> str:
    if recipe not in RECIPES:
        raise ValueError(f"training.recipe {recipe!r} is unknown; allowed: {', '.join(RECIPES)}")
    return recipe


def official_entry(official: str | None, recipe: str) -> Official | None:
    """The official entry a kind naming `official` follows under `recipe`, or None (project, or no official)."""
    if check_recipe(recipe) != "official" or official is None:
        return None
    return OFFICIAL[official]


def train_config(official: str | None, training: dict[str, Any], fit: bool = False) -> TrainConfig:
    """The loop a kind naming `official` trains with: the `training` section's keys (a fit reads only its batch
    size and seed), then what its official entry sets under `training.recipe` (absent: `project`)."""
    if fit:
        return TrainConfig(batch_size=training["batch_size"], seed=training["seed"])
    cfg = TrainConfig.from_settings(training)
    entry = official_entry(official, training.get("recipe", DEFAULT_RECIPE))
    if entry is None:
        return cfg
    cfg = replace(cfg, **entry.loop)
    if entry.batch is not None:  # the official batch by accumulating training.batch_size micro-batches
        cfg = replace(cfg, accumulation=max(1, entry.batch // cfg.batch_size))
    return cfg


@dataclass(frozen=True)
class Windows:
    """The token windows a healing trains or fits on: `samples` windows of `seq_len` tokens of `dataset`.
    `capped`: an official calibration size, cut to what the offline text holds (count)."""

    dataset: str
    samples: int
    seq_len: int
    capped: bool = False

    def count(self, text_tokens: int, val_samples: int) -> int:
        """The training windows to draw from a text of `text_tokens` tokens whose last `val_samples` windows are
        the validation part: `samples`, or for a capped size as many windows as the rest holds (at least 1)."""
        if not self.capped:
            return self.samples
        return max(1, min(self.samples, (text_tokens - val_samples * self.seq_len) // self.seq_len))


def windows(official: str | None, training: dict[str, Any]) -> Windows:
    """The windows a kind naming `official` trains or fits on: the `training` section's, or its official
    calibration size under recipe `official` (where the offline text allows it: Windows.count)."""
    entry = official_entry(official, training.get("recipe", DEFAULT_RECIPE))
    if entry is None or entry.calibration is None:
        return Windows(training["dataset"], training["samples"], training["seq_len"])
    calibration = entry.calibration
    return Windows(calibration.dataset or training["dataset"], calibration.samples, calibration.seq_len, True)
