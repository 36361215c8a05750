"""Validation loss and perplexity over the run's fixed validation set.

The same rows at every evaluation (built once by data/validation.py, never seen by training), so
values are comparable across steps, and the same set whatever the batch split or world size, so
they are comparable across runs. Per-token losses are summed over the set (across ranks) and
divided by its counted target tokens. Eval mode turns dropout off, so evaluation draws nothing
from the RNG and leaves an exact resume undisturbed.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
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
                logits, _ = model(inputs)  # (B, T, V)
            # A sum per token, not the model's mean per batch: a padding batch with no counted
            # target adds 0 (a mean would be 0/0), and batches weigh by their tokens. fp32, as
            # the model computes its training loss.
            total += F.cross_entropy(
                logits.float().view(-1, logits.shape[-1]),
                targets.reshape(-1),
                ignore_index=-100,
                reduction="sum",
            ).double()
            count += (targets != -100).sum()
    finally:
        model.train(was_training)
    total, count = dist.all_reduce_sum(total), dist.all_reduce_sum(count)
    if count.item() == 0:
        return {"val_loss": float("nan"), "val_ppl": float("nan")}
    loss = (total / count).item()
    return {"val_loss": loss, "val_ppl": math.exp(min(loss, 700.0))}
