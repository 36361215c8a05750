"""Parameter groups, the optimizer, and learning-rate schedules as pure functions of the step.

The schedule is a pure function ``lr(step)`` rather than a ``torch.optim.lr_scheduler`` object:
resuming needs nothing but the step counter, and tests compare it to the formula directly.
``step`` counts optimizer updates already applied, so the first update uses ``lr(0)``. An
attempt the loop skips (non-finite loss, fp16 overflow) does not advance it: the schedule follows
applied updates, so warmup and decay are spent on updates that happened (PyTorch's scaler
examples step the scheduler on every attempt instead; then a run of early overflows would use up
warmup with nothing learned).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from lmstream.config import OptimizerConfig, SchedulerConfig
from lmstream.errors import ConfigError


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: matrices (linear and embedding weights) decay, vectors (norms, biases) don't.

    Decaying norm gains and biases only pulls them towards zero with no regularising benefit
    (the GPT-2/nanoGPT convention). Tied parameters appear once (named_parameters dedups).
    """
    decay, no_decay = [], []
    for _, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (decay if param.dim() >= 2 else no_decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(
    model: nn.Module, cfg: OptimizerConfig, lr: float, device: torch.device
) -> torch.optim.Optimizer:
    """AdamW (fused; foreach for sharded parameters) or SGD with momentum, over :func:`parameter_groups`."""
    groups = parameter_groups(model, cfg.weight_decay)
    if cfg.algorithm == "adam_w":
        # Fused AdamW (one kernel over all parameters; on CPU since torch 2.4) measured 1.03-1.07x
        # per full CPU train step over foreach (BENCHMARKS.md). FSDP2's sharded DTensor
        # parameters keep the foreach path, which supports them on every backend.
        impl = {"foreach": True} if _has_dtensor(groups) else {"fused": True}
        return torch.optim.AdamW(
            groups, lr=lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.epsilon, **impl
        )
    if cfg.algorithm == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, foreach=True)
    raise ConfigError(
        f"optimizer.algorithm: unknown optimizer {cfg.algorithm!r}; use 'adam_w' or 'sgd'"
    )


def _has_dtensor(groups: list[dict]) -> bool:
    from lmstream.distributed import is_dtensor

    return any(is_dtensor(p) for g in groups for p in g["params"])


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def lr_at(
    step: int,
    *,
    strategy: str,
    peak_lr: float,
    min_lr: float,
    warmup_steps: int,
    total_steps: int,
) -> float:
    """The learning rate of update number ``step`` (0-based).

    Warmup rises linearly to the peak: ``peak * (step + 1) / warmup_steps`` (so the first update
    is not wasted at lr 0). Then ``progress = (step - warmup) / (total - warmup)`` in [0, 1]:
    cosine ``min + (peak - min) * (1 + cos(pi * progress)) / 2``, linear
    ``peak - (peak - min) * progress``, constant ``peak``. Past ``total_steps`` the schedule stays
    at its end value.
    """
    if step < warmup_steps:
        return peak_lr * (step + 1) / warmup_steps
    if strategy == "constant_with_warmup":
        return peak_lr
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    if strategy == "cosine_with_warmup":
        return min_lr + (peak_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
    if strategy == "linear_with_warmup":
        return peak_lr - (peak_lr - min_lr) * progress
    raise ConfigError(
        f"scheduler.strategy: unknown strategy {strategy!r}; use cosine_with_warmup, "
        "linear_with_warmup or constant_with_warmup"
    )


def make_schedule(
    cfg: SchedulerConfig, peak_lr: float, min_lr: float, total_steps: int
) -> Callable[[int], float]:
    """``lr(step)`` for this config. ``total_steps`` is passed in because with ``total_epochs``
    it is only known once the length of an epoch has been measured."""
    if cfg.warmup_steps >= total_steps:
        raise ConfigError(
            f"scheduler.warmup_steps: {cfg.warmup_steps} is not smaller than the run's "
            f"{total_steps} optimizer steps; lower warmup_steps"
        )

    def lr(step: int) -> float:
        return lr_at(
            step,
            strategy=cfg.strategy,
            peak_lr=peak_lr,
            min_lr=min_lr,
            warmup_steps=cfg.warmup_steps,
            total_steps=total_steps,
        )

    return lr
