"""The loss-spike guard (``runtime.spike_guard``): skip an update whose loss or gradient norm is
far above the recent steps', as OLMo-core's ``SkipStepOptimizer`` does.

A spike's gradient can throw the weights somewhere the run never recovers from (PaLM restarted
from a checkpoint and skipped batches by hand; OLMo-core skips the step automatically). The
statistics are the mean and standard deviation of the last ``window`` checked steps; the guard
acts once that window is full. Every checked value enters the window, spikes included (as in
OLMo-core), so a lasting change of level is accepted after a few skips instead of stopping the
run. The history lives in TrainState (``spike_history``), saved with every checkpoint, so a
resumed run makes the same decisions as an uninterrupted one.

Deciding on the host costs one ``.item()`` per step (and one all-reduce of the loss with
several ranks); nothing is synced when the guard is off.
"""

from __future__ import annotations

import math

import torch

from lmstream import distributed as dist
from lmstream.config import SpikeGuardConfig
from lmstream.train.state import TrainState


class SpikeGuard:
    def __init__(self, cfg: SpikeGuardConfig, state: TrainState):
        self.cfg = cfg
        self.state = state  # the run's TrainState: history is saved with it
        self.last_reason: str | None = None

    def check(self, loss: torch.Tensor, grad_norm: torch.Tensor) -> bool:
        """Record this step's values; True when the update should be skipped. Collective: every
        rank calls it with its part of the loss and gets the same answer."""
        value = float(dist.all_reduce_mean(loss.detach().float()).item())
        norm = float(grad_norm.item())
        history = self.state.spike_history
        del history[: -self.cfg.window]  # a checkpoint of a run with a longer window
        self.last_reason = None
        if len(history) >= self.cfg.window:
            for index, name, current in ((0, "loss", value), (1, "grad_norm", norm)):
                if self.cfg.watch not in (name, "both"):
                    continue
                sigmas = _sigmas(current, [h[index] for h in history])
                if sigmas > self.cfg.threshold_sigma:
                    self.last_reason = (
                        f"{name} {current:.4g} is {sigmas:.1f} standard deviations above the "
                        f"last {len(history)} steps' mean (runtime.spike_guard.threshold_sigma "
                        f"= {self.cfg.threshold_sigma:g})"
                    )
                    break
        history.append([value, norm])
        del history[: -self.cfg.window]
        return self.last_reason is not None


def _sigmas(value: float, window: list[float]) -> float:
    """How many sample standard deviations ``value`` lies above the window's mean (0 when the
    window does not vary: no scale to judge by)."""
    mean = sum(window) / len(window)
    std = math.sqrt(sum((v - mean) ** 2 for v in window) / (len(window) - 1))
    return (value - mean) / std if std > 0 else 0.0
