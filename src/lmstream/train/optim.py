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
    """AdamW (fused; foreach for sharded parameters) or SGD with momentum, over
    :func:`parameter_groups`; or Muon with AdamW (lmstream.train.muon)."""
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
    if cfg.algorithm == "muon":
        from lmstream.train.muon import build_muon

        return build_muon(model, cfg, lr)
    raise ConfigError(
        f"optimizer.algorithm: unknown optimizer {cfg.algorithm!r}; use 'adam_w', 'sgd' or 'muon'"
    )


def _has_dtensor(groups: list[dict]) -> bool:
    from lmstream.distributed import is_dtensor

    return any(is_dtensor(p) for g in groups for p in g["params"])


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Every group at ``lr`` times its ``lr_scale`` (Muon's groups: its own peak over AdamW's, so
    both follow the one schedule's shape)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def lr_at(
    step: int,
    *,
    strategy: str,
    peak_lr: float,
    min_lr: float,
    warmup_steps: int,
    total_steps: int,
    decay_steps: int = 0,
    decay_shape: str = "linear",
) -> float:
    """The learning rate of update number ``step`` (0-based).

    Warmup rises linearly to the peak: ``peak * (step + 1) / warmup_steps`` (so the first update
    is not wasted at lr 0). Then ``progress = (step - warmup) / (total - warmup)`` in [0, 1]:
    cosine ``min + (peak - min) * (1 + cos(pi * progress)) / 2``, linear
    ``peak - (peak - min) * progress``, constant ``peak``. Past ``total_steps`` the schedule stays
    at its end value.

    ``warmup_stable_decay`` (WSD; Hu et al. 2024, MiniCPM; Hägele et al. 2024) holds the peak
    until ``total - decay_steps``, then decays to ``min`` with ``p = (step + 1 - (total - decay))
    / decay`` (counted like the warmup, so the run's last update, ``total - 1``, is at ``min``
    and even a one-step decay decays): linear ``peak - (peak - min) * p``, cosine as above, 1-sqrt
    ``min + (peak - min) * (1 - sqrt(p))`` (Hägele et al.'s best shape). The decay is anchored to
    the end, so a resume with a larger ``total_steps`` is still in the stable phase.
    """
    if step < warmup_steps:
        return peak_lr * (step + 1) / warmup_steps
    if strategy == "constant_with_warmup":
        return peak_lr
    if strategy == "warmup_stable_decay":
        return _wsd(step, peak_lr, min_lr, total_steps, decay_steps, decay_shape)
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    if strategy == "cosine_with_warmup":
        return min_lr + (peak_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
    if strategy == "linear_with_warmup":
        return peak_lr - (peak_lr - min_lr) * progress
    raise ConfigError(
        f"scheduler.strategy: unknown strategy {strategy!r}; use cosine_with_warmup, "
        "linear_with_warmup, constant_with_warmup or warmup_stable_decay"
    )


def _wsd(step: int, peak: float, floor: float, total: int, decay: int, shape: str) -> float:
    start = total - decay
    if step < start:
        return peak
    p = min(1.0, (step + 1 - start) / max(1, decay))
    if shape == "cosine":
        return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * p))
    if shape == "1-sqrt":
        return floor + (peak - floor) * (1.0 - math.sqrt(p))
    return peak - (peak - floor) * p


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
    decay = cfg.decay_length(total_steps)
    if cfg.warmup_steps + decay > total_steps:  # total_epochs: known only now
        field = "decay_steps" if cfg.decay_steps is not None else "decay_fraction"
        raise ConfigError(
            f"scheduler.{field}: warmup ({cfg.warmup_steps}) + decay ({decay}) exceed the "
            f"run's {total_steps} optimizer steps; shorten the decay or the warmup"
        )

    def lr(step: int) -> float:
        return lr_at(
            step,
            strategy=cfg.strategy,
            peak_lr=peak_lr,
            min_lr=min_lr,
            warmup_steps=cfg.warmup_steps,
            total_steps=total_steps,
            decay_steps=decay,
            decay_shape=cfg.decay_shape or "linear",
        )

    return lr
