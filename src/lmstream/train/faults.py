"""Fault-injection hooks for the reliability tests (tests/reliability/). Inert unless their
environment variables are set; nothing else in lmstream reads them.

``LMSTREAM_FAULT_SPIKE_STEPS`` (same syntax as below): attempts whose loss is multiplied by 100,
the loss spike that ``runtime.spike_guard`` must skip (the gradients are left as they were).

``LMSTREAM_FAULT_NONFINITE_STEPS``: optimizer-step *attempts* whose loss is replaced by NaN, as
an fp16 overflow or a bad batch would make it, e.g. ``"5,6,13"`` or ``"11-"`` (from 11 on) or
``"3-4,9"``. Attempts count every optimizer step tried, skipped ones included, from 1 over the
whole run (a resumed run continues the count, since it is derived from the micro-batches seen),
so the same value injects at the same moments however often the run is interrupted. The loop
then does what it does for a real non-finite loss: skips the update and counts it, and stops
after ``runtime.max_nonfinite_steps`` in a row.
"""

from __future__ import annotations

import os
from functools import lru_cache

import torch

from lmstream.errors import ConfigError

NONFINITE_ENV = "LMSTREAM_FAULT_NONFINITE_STEPS"


@lru_cache(maxsize=4)
def _parse(spec: str) -> tuple[tuple[int, float], ...]:
    """``"5,7-9,20-"`` -> ((5, 5), (7, 9), (20, inf)); ConfigError naming the variable if bad."""
    ranges = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        lo, sep, hi = part.partition("-")
        try:
            start = int(lo)
            end = (float("inf") if not hi.strip() else int(hi)) if sep else start
        except ValueError:
            raise ConfigError(
                f"{NONFINITE_ENV}: {spec!r} is not a list of step numbers or ranges "
                "like '5,7-9,20-'"
            ) from None
        if start < 1 or end < start:
            raise ConfigError(f"{NONFINITE_ENV}: bad range {part!r} (steps count from 1)")
        ranges.append((start, end))
    return tuple(ranges)


def nonfinite_loss(loss: torch.Tensor, attempt: int) -> torch.Tensor:
    """``loss``, or NaN when ``attempt`` (1-based) is listed in LMSTREAM_FAULT_NONFINITE_STEPS."""
    spec = os.environ.get(NONFINITE_ENV)
    if not spec:
        return loss
    if any(lo <= attempt <= hi for lo, hi in _parse(spec)):
        return loss * float("nan")
    return loss


SPIKE_ENV = "LMSTREAM_FAULT_SPIKE_STEPS"


def spike_loss(loss: torch.Tensor, attempt: int) -> torch.Tensor:
    """``loss``, or 100 x ``loss`` when ``attempt`` is listed in LMSTREAM_FAULT_SPIKE_STEPS
    (same syntax): the loss spike that ``runtime.spike_guard`` must catch."""
    spec = os.environ.get(SPIKE_ENV)
    if spec and any(lo <= attempt <= hi for lo, hi in _parse(spec)):
        return loss * 100.0
    return loss
