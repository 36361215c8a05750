"""Validation loss and perplexity over the run's fixed validation batches.

The same batches at every evaluation (built once by the data loader, never seen by training), so
values are comparable across steps. Losses are weighted by counted target tokens and summed over
ranks; eval mode turns dropout off, so evaluation draws nothing from the RNG and leaves an exact
resume undisturbed.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from lmstream import distributed as dist


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches: Sequence,
    device: torch.device,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> dict[str, float]:
    """``{"val_loss": mean cross-entropy per target token, "val_ppl": exp(val_loss)}``.

    ``batches`` hold ``inputs`` and ``targets`` (B, T); ``autocast`` is the run's precision
    context factory (e.g. ``precision.autocast``).
    """
    was_training = model.training
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=device)
    count = torch.zeros((), dtype=torch.float64, device=device)
    try:
        for batch in batches:
            inputs = batch.inputs.to(device, non_blocking=True)
            targets = batch.targets.to(device, non_blocking=True)
            with autocast():
                _, loss = model(inputs, targets)
            n = (targets != -100).sum()
            total += loss.double() * n
            count += n
    finally:
        model.train(was_training)
    total, count = dist.all_reduce_sum(total), dist.all_reduce_sum(count)
    if count.item() == 0:
        return {"val_loss": float("nan"), "val_ppl": float("nan")}
    loss = (total / count).item()
    return {"val_loss": loss, "val_ppl": math.exp(min(loss, 700.0))}
