"""A healing job as one value: the resolved kind, the plan, the data, the runtime, the caches and the settings.

heal.py dispatches a job by its kind's `trains` to one function (replace.train_pairs, lm.train_lm_healing,
fit.fit_healing, or the plain removal of heal.py); each reads what it needs from the job instead of a long argument
list. steps.replace_step builds the job from the workflow's settings; heal.run_healing from plain values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from streamline.healing.kinds import HealingKind
from streamline.healing.train_config import TrainConfig

INIT_LAYERS = ("first", "best_fit")  # schema `training.init_layer`
EMPTY_IDS = torch.empty(0, 0, dtype=torch.long)  # the data of a kind that trains nothing


@dataclass(frozen=True)
class Runtime:
    """Where and in which dtype the dense model runs (`compute_dtype`); checkpoints keep the dense one's dtype."""

    device: str = "cpu"
    compute_dtype: torch.dtype = torch.float32


@dataclass(frozen=True)
class Caches:
    """Hidden-state pairs: the shared cache folder (pair_cache.py; None: a scratch folder under `scratch_dir`,
    default TMPDIR, removed afterwards) and the sequences per on-disk shard (the schema's defaults)."""

    pair_cache: Path | None = None
    scratch_dir: Path | None = None
    shard_sequences: int = 16


@dataclass(frozen=True)
class HealingJob:
    """Everything one healing needs. `train_ids` / `val_ids`: (S, T) token windows of its data (empty when the kind
    trains nothing); `cfg`: the loop (recipes.train_config), `lora`: the `lora:` settings of a LoRA kind;
    `init_layer`: training.init_layer, read only by kinds whose start layer follows it (init_rule)."""

    kind: HealingKind
    plan: dict[str, Any]
    dense_dir: Path
    out_dir: Path
    train_ids: torch.Tensor = EMPTY_IDS
    val_ids: torch.Tensor = EMPTY_IDS
    cfg: TrainConfig = field(default_factory=TrainConfig)
    lora: dict[str, Any] = field(default_factory=dict)
    init_layer: str | None = "first"
    runtime: Runtime = field(default_factory=Runtime)
    caches: Caches = field(default_factory=Caches)

    @property
    def healing(self) -> str:
        return self.kind.name

    @property
    def window(self) -> tuple[int, int]:
        """(start, end) of the plan's removed window; an error for plans whose layers are not one window."""
        if self.plan.get("start_layer") is None:
            raise ValueError(
                f"healing {self.healing!r} needs a window of consecutive layers; the plan removes "
                f"{self.plan['removed_layers']}"
            )
        start = int(self.plan["start_layer"])
        return start, start + int(self.plan["num_layers_removed"])

    @property
    def init_rule(self) -> str | None:
        """How the kind picks its module's start layer (its `init`): `training.init_layer` where it follows the
        setting, `best_fit` for a `-bestfit` kind, None for kinds that start from no layer."""
        if self.kind.init != "setting":
            return self.kind.init
        if self.init_layer not in INIT_LAYERS:
            raise ValueError(f"init_layer {self.init_layer!r} is unknown; allowed: {', '.join(INIT_LAYERS)}")
        return self.init_layer

