"""A data mixture's metrics: ``tokens_seen/NAME``, ``epoch/NAME`` and ``val_loss/NAME``.

With one source nothing here adds a key: its metrics stay exactly as they were. With several,
training logs the target tokens drawn from each source so far (summed over ranks, kept in the
checkpoint's counters) and each source's epoch (the furthest any rank's worker has reached);
evaluation logs each source's validation loss and ``val_loss`` = their weight-averaged mean, the
value best-checkpoint selection ranks (a plain token-weighted mean would let the source with the
longest validation documents decide).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from lmstream import distributed as dist
from lmstream.train.evaluate import evaluate


def mixture_of(loader) -> tuple[tuple[str, ...], tuple[float, ...]] | None:
    """(names, weights) of the loader's sources when it reads a mixture, else None."""
    mix = getattr(loader, "mix", None)
    return (mix.names, mix.weights) if mix is not None else None


def add_source_tokens(state, micro: Sequence, names: tuple[str, ...], device) -> None:
    """Add the step's target tokens per source, summed over ranks, to ``state.source_tokens``
    (one small all-reduce per step, only for mixtures; idle batches add nothing)."""
    local = torch.zeros(len(names), dtype=torch.float64)
    for batch in micro:
        counts = getattr(batch, "source_tokens", ())
        if counts and batch.weight > 0:
            local += torch.tensor(counts, dtype=torch.float64)
    total = dist.all_reduce_sum(local.to(device)).tolist()
    seen = dict(state.source_tokens or {})
    for name, n in zip(names, total, strict=True):
        seen[name] = seen.get(name, 0) + int(n)
    state.source_tokens = seen


def source_metrics(state, loader, names: tuple[str, ...], device) -> dict[str, float]:
    """``tokens_seen/NAME`` and ``epoch/NAME`` for a log line (collective: every rank calls it)."""
    epochs = list(loader.source_epochs) or [0] * len(names)
    epochs = dist.all_reduce_max(torch.tensor(epochs, dtype=torch.float64).to(device)).tolist()
    seen = state.source_tokens or {}
    out: dict[str, float] = {f"tokens_seen/{n}": seen.get(n, 0) for n in names}
    out.update({f"epoch/{n}": int(e) for n, e in zip(names, epochs, strict=True)})
    return out


def evaluate_sources(
    model: nn.Module,
    batches: Sequence,
    device: torch.device,
    autocast: Callable[[], contextlib.AbstractContextManager],
    names: tuple[str, ...],
    weights: tuple[float, ...],
) -> dict[str, float]:
    """``val_loss/NAME`` per source (its own validation batches), and ``val_loss`` /
    ``val_ppl`` of their weight-averaged mean (weights renormalised over the sources that have
    a validation set)."""
    out: dict[str, float] = {}
    mean, total_weight = 0.0, 0.0
    for name, weight in zip(names, weights, strict=True):
        own = [b for b in batches if getattr(b, "source", None) == name]
        if not own:
            continue
        loss = evaluate(model, own, device, autocast)["val_loss"]
        out[f"val_loss/{name}"] = loss
        mean, total_weight = mean + weight * loss, total_weight + weight
    if total_weight > 0:
        out["val_loss"] = mean / total_weight
        out["val_ppl"] = math.exp(min(out["val_loss"], 700.0))
    return out
