"""training.yaml's `optimizer:` and `scheduler:` sections (see lmstream.config)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from lmstream.config_base import (
    _Section,
)

# ----------------------------------------------------------------------------------- optimizer


class OptimizerConfig(_Section):
    """The optimizer (seed: `optimizer:`)."""

    algorithm: Literal["adam_w", "sgd", "muon"] = Field(
        default="adam_w",
        description="'adam_w' (decoupled weight decay), 'sgd' (with momentum), or 'muon' "
        "(Muon for the blocks' 2-D matrices, AdamW for the rest; torch >= 2.9).",
    )
    learning_rate: float = Field(
        gt=0.0, description="Peak learning rate (unless scheduler.max_lr is set)."
    )
    weight_decay: float = Field(
        default=0.0,
        ge=0.0,
        description="Weight decay, applied to matrices only (not norms or biases).",
    )
    beta1: float = Field(default=0.9, ge=0.0, lt=1.0, description="AdamW beta1.")
    beta2: float = Field(default=0.95, ge=0.0, lt=1.0, description="AdamW beta2.")
    epsilon: float = Field(default=1e-8, gt=0.0, description="AdamW epsilon.")
    momentum: float = Field(default=0.9, ge=0.0, lt=1.0, description="SGD momentum.")
    max_grad_norm: float | None = Field(
        default=1.0,
        gt=0.0,
        description="Clip the global gradient norm to this; null = no clipping.",
    )
    z_loss: float = Field(
        default=0.0,
        ge=0.0,
        le=1.0,
        description="Weight of PaLM's auxiliary loss z_loss * mean(log(Z)^2) (1e-4 in PaLM); "
        "logged as z_loss; 0 = off.",
    )
    muon_learning_rate: float | None = Field(
        default=None,
        gt=0.0,
        le=1.0,
        description="Muon's peak learning rate (it follows the schedule's shape); null = 0.02.",
    )
    muon_momentum: float | None = Field(
        default=None, ge=0.0, lt=1.0, description="Muon's Nesterov momentum; null = 0.95."
    )

    @model_validator(mode="after")
    def _check_algorithm_fields(self) -> OptimizerConfig:
        muon_fields = [
            f for f in ("muon_learning_rate", "muon_momentum") if getattr(self, f) is not None
        ]
        if self.algorithm != "muon" and muon_fields:
            raise ValueError(
                f"{muon_fields[0]}: only used with algorithm: muon (algorithm is {self.algorithm!r})"
            )
        # The seed writes momentum: 0.9 with adam_w, and dumps keep it: only another value
        # under muon is a mistake worth stopping for (it would silently do nothing).
        if self.algorithm == "muon" and self.momentum != 0.9:
            raise ValueError(
                f"momentum: {self.momentum} is SGD's momentum, unused with algorithm: muon; "
                "set muon_momentum instead"
            )
        return self


# ----------------------------------------------------------------------------------- scheduler


class SchedulerConfig(_Section):
    """The learning-rate schedule (seed: `scheduler:`)."""

    strategy: Literal[
        "cosine_with_warmup", "linear_with_warmup", "constant_with_warmup", "warmup_stable_decay"
    ] = Field(
        default="cosine_with_warmup",
        description="Shape of the schedule after the linear warmup; warmup_stable_decay holds "
        "the peak, then decays over the last decay_steps (or decay_fraction of the run).",
    )
    warmup_steps: int = Field(
        default=0, ge=0, description="Optimizer steps of linear warmup from 0 to the peak."
    )
    total_steps: int | None = Field(
        default=None,
        ge=1,
        description="Optimizer steps of the whole run; null = derived from total_epochs.",
    )
    total_epochs: int | None = Field(
        default=None, ge=1, description="Passes over a finite stream; null = not limited by epochs."
    )
    min_lr: float | None = Field(default=None, ge=0.0, description="Floor of the decay; null = 0.")
    max_lr: float | None = Field(
        default=None, gt=0.0, description="Peak learning rate; null = optimizer.learning_rate."
    )
    decay_steps: int | None = Field(
        default=None, ge=1, description="warmup_stable_decay: optimizer steps of the final decay."
    )
    decay_fraction: float | None = Field(
        default=None,
        gt=0.0,
        le=1.0,
        description="warmup_stable_decay: the final decay as a fraction of total steps.",
    )
    decay_shape: Literal["linear", "cosine", "1-sqrt"] | None = Field(
        default=None,
        description="warmup_stable_decay: shape of the decay to min_lr; null = linear.",
    )

    @model_validator(mode="after")
    def _check_steps(self) -> SchedulerConfig:
        if self.total_steps is None and self.total_epochs is None:
            raise ValueError("total_steps: set total_steps or total_epochs (both are null)")
        if self.total_steps is not None and self.warmup_steps >= self.total_steps:
            raise ValueError(
                f"warmup_steps: {self.warmup_steps} must be smaller than total_steps ({self.total_steps})"
            )
        return self._check_decay()

    def _check_decay(self) -> SchedulerConfig:
        """The decay fields belong to warmup_stable_decay, which needs exactly one length."""
        given = [
            f
            for f in ("decay_steps", "decay_fraction", "decay_shape")
            if getattr(self, f) is not None
        ]
        if self.strategy != "warmup_stable_decay":
            if given:
                raise ValueError(
                    f"{given[0]}: only used with strategy: warmup_stable_decay "
                    f"(strategy is {self.strategy!r})"
                )
            return self
        if (self.decay_steps is None) == (self.decay_fraction is None):
            raise ValueError(
                "decay_steps: warmup_stable_decay needs exactly one of decay_steps or decay_fraction"
            )
        if (
            self.total_steps is not None
            and self.warmup_steps + self.decay_length(self.total_steps) > self.total_steps
        ):
            field = "decay_steps" if self.decay_steps is not None else "decay_fraction"
            raise ValueError(
                f"{field}: warmup_steps ({self.warmup_steps}) + decay "
                f"({self.decay_length(self.total_steps)}) exceed total_steps ({self.total_steps})"
            )
        return self

    def decay_length(self, total_steps: int) -> int:
        """warmup_stable_decay's decay in steps for a run of ``total_steps`` (0 otherwise)."""
        if self.decay_steps is not None:
            return self.decay_steps
        if self.decay_fraction is not None:
            return max(1, round(self.decay_fraction * total_steps))
        return 0
