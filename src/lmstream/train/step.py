"""One optimizer step's arithmetic: token-weighted forward/backward over the step's
micro-batches, then clip, check (non-finite, spikes) and step. The loop (train/loop.py) drives
them; benchmarks and tests call them directly.
"""

from __future__ import annotations

import torch
from torch import nn

from lmstream import distributed as dist
from lmstream.train.optim import set_lr
from lmstream.train.precision import Precision
from lmstream.train.spike_guard import SpikeGuard
from lmstream.train.z_loss import z_loss_term


def forward_backward(
    model: nn.Module,
    micro_batches: list,
    precision: Precision,
    device: torch.device,
    z_loss: float = 0.0,
    aux: dict | None = None,
) -> torch.Tensor:
    """Accumulate gradients of the mean loss per target token over the step's micro-batches of
    every rank; returns this rank's part of that mean (detached), scaled so that the mean of the
    parts over ranks is the step's loss. Gradients are synchronised across ranks only on the
    last micro-step (nanoGPT's ``require_backward_grad_sync``).

    Ranks can hold different numbers of counted (not -100) targets: a worker's final batch is
    padded with ignored targets, and a rank whose part of the epoch is used up steps on idle
    batches (weight 0, lmstream.data.loader). DDP and FSDP2 average gradients over ranks with
    equal weights, so each rank scales its loss by (its tokens / all ranks' tokens) x world
    size; the average is then the gradient of one batch of all ranks' counted tokens.

    ``z_loss`` > 0 adds PaLM's z-loss to the objective (lmstream.train.z_loss); the returned loss
    stays the cross-entropy, and this rank's part of the z-loss goes to ``aux["z_loss"]``.
    """
    n = len(micro_batches)
    # Counted from the host copies of the targets (no device sync); an idle batch counts for
    # nothing. One small all-reduce per step gives every rank the step's total.
    counts = [int(b.weight * int((b.targets != -100).sum())) for b in micro_batches]
    world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    total_count = sum(counts)
    if world > 1:
        total_count = int(dist.all_reduce_sum(torch.tensor(total_count, device=device)).item())
    total = torch.zeros((), device=device)
    z_total = torch.zeros((), device=device)
    for i, batch in enumerate(micro_batches):
        inputs = batch.inputs.to(device, non_blocking=True)
        targets = batch.targets.to(device, non_blocking=True)
        # An integer ratio that is exactly 1.0 when every micro-batch of every rank counts the
        # same tokens (the packer's full rows), so the usual step stays bit-identical to
        # ``loss / n``. Nothing counted anywhere (all idle): weight 0.
        share = counts[i] * n * world / total_count if total_count else batch.weight
        # A micro-batch of padding only (regroup cut a worker's padded last batch) has loss 0/0
        # = NaN and share 0: it adds nothing (NaN x 0 made the step's loss NaN, and the step was
        # skipped). Nothing counted anywhere keeps its NaN: that step is skipped.
        adds = counts[i] > 0 or not total_count
        with dist.gradient_sync(model, enabled=i == n - 1):
            with precision.autocast():
                if z_loss:  # log Z per token: from the logits, or the chunked loss's rows
                    _, loss, lse = model(inputs, targets, return_lse=True)
                else:
                    _, loss = model(inputs, targets)
            objective = loss
            if z_loss:
                z = z_loss * z_loss_term(lse, targets)
                objective = loss + z
                if adds:
                    z_total += z.detach() * share
            scaled = objective * share / n
            if precision.scaler is not None:
                scaled = precision.scaler.scale(scaled)
            scaled.backward()
        if adds:
            total += loss.detach() * share
    if aux is not None and z_loss:
        aux["z_loss"] = z_total / n
    return total / n


def optimizer_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    precision: Precision,
    loss: torch.Tensor,
    lr: float,
    max_grad_norm: float | None,
    guard: SpikeGuard | None = None,
) -> tuple[torch.Tensor, bool]:
    """Clip, check and step. Returns (gradient norm before clipping, whether the update was
    applied).

    A non-finite loss or gradient norm skips the update. Under fp16 that is also the
    GradScaler's overflow check (an inf/NaN in the unscaled gradients makes the norm non-finite),
    so an update the scaler would skip is reported as skipped, not counted as a step. A finite
    step that ``guard`` judges a spike is skipped too (``guard.last_reason`` says why).
    """
    set_lr(optimizer, lr)
    scaler = precision.scaler
    if scaler is not None:
        scaler.unscale_(optimizer)
    limit = max_grad_norm if max_grad_norm is not None else float("inf")
    # Under FSDP2 the norm is a DTensor over every rank's shards: make it one plain value.
    grad_norm = dist.local_tensor(torch.nn.utils.clip_grad_norm_(model.parameters(), limit))
    bad = ~torch.isfinite(loss) | ~torch.isfinite(grad_norm)
    ok = dist.all_reduce_sum(bad.float()).item() == 0  # every rank must agree to skip
    spike = False
    if guard is not None:
        guard.last_reason = None
        spike = ok and guard.check(loss, grad_norm)  # (non-finite values stay out of its stats)
    if ok and not spike:
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
    elif spike and scaler is not None:
        scaler.update()  # finite gradients: no backoff, but this step's unscale_ is closed
    elif scaler is not None:
        # Back off from the agreed decision rather than this rank's own inf check: under FSDP
        # a rank whose gradient shard is finite would otherwise keep its scale while the others
        # lower theirs. As the scaler's own backoff, the growth count restarts.
        scaler.update(scaler.get_scale() * scaler.get_backoff_factor())
        scaler.load_state_dict(scaler.state_dict() | {"_growth_tracker": 0})
    optimizer.zero_grad(set_to_none=True)
    return grad_norm.detach(), ok and not spike
