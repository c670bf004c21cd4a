"""The training loop's settings (TrainConfig), a plain value: recipes.py and the healing registry read it at
Snakemake's parse, which imports no torch; training.py runs the loop they describe."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

SCHEDULES = ("cosine", "cosine_min_lr", "linear")
SCHEDULE_UNITS = ("step", "micro")  # the scheduler advances per optimizer step or per micro-batch


@dataclass(frozen=True)
class TrainConfig:
    """Optimiser settings; the defaults equal the schema's `training` defaults (tests/test_registry.py checks) and
    the project's loop.

    `accumulation`: micro-batches (of `batch_size`) per optimizer step, each loss divided by it; `partial_step`:
    the micro-batches left at an epoch's end (fewer than `accumulation`) still make a step (else their gradients
    are dropped, as train_lightweightnetwork.py's zero_grad at each epoch's start does). `max_grad_norm`: gradient
    clipping (None: none). `schedule`: `cosine` (transformers, to 0), `cosine_min_lr` (LLM-Streamline's
    scheduler.py: cosine from lr to min_lr, the cosine continuing past its horizon), `linear` (transformers, to 0).
    `horizon`: None sizes the schedule by the optimizer steps the run makes; a number sizes it as that multiple of
    the micro-batches the run sees (the official loops pass `len(train_dataloader) x epochs x 0.5`), advancing
    per `schedule_per` unit. Warm-up: `warmup_steps` when given, else `warmup_ratio` of the schedule's length
    (of the micro-batches with a `horizon`, as the official loops size it).
    `attention`: how a `layer` replacement attends when trained alone (families.ATTENTIONS).
    """

    epochs: int = 5
    batch_size: int = 8
    lr: float = 2e-4  # the paper's code
    weight_decay: float = 1e-3  # the paper's code
    warmup_ratio: float = 0.1
    betas: tuple[float, float] = (0.9, 0.999)  # torch's AdamW default, as the paper's MSE training uses it
    seed: int = 0
    progress: bool = True
    accumulation: int = 1
    partial_step: bool = True
    max_grad_norm: float | None = None
    schedule: str = "cosine"
    min_lr: float = 0.0
    horizon: float | None = None
    schedule_per: str = "step"
    warmup_steps: int | None = None
    attention: str = "causal"

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule {self.schedule!r} is unknown; allowed: {', '.join(SCHEDULES)}")
        if self.schedule_per not in SCHEDULE_UNITS:
            raise ValueError(f"schedule_per {self.schedule_per!r} is unknown; allowed: {', '.join(SCHEDULE_UNITS)}")
        if self.accumulation < 1:
            raise ValueError(f"accumulation {self.accumulation} must be at least 1")

    @classmethod
    def from_settings(cls, training: dict[str, Any]) -> TrainConfig:
        """From the config's `training` section (the schema's fields; the other keys are the data's)."""
        keys = ("epochs", "batch_size", "lr", "weight_decay", "warmup_ratio", "seed")
        return cls(**{key: training[key] for key in keys})

    def optimizer_steps(self, batches_per_epoch: int) -> int:
        """Optimizer steps one epoch of `batches_per_epoch` micro-batches makes."""
        full, left = divmod(batches_per_epoch, self.accumulation)
        return full + (1 if left and self.partial_step else 0)
