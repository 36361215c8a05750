"""The micro-batches of each optimizer step, taken from the run's loader, and what a step that
cannot finish leaves behind.

A step's fetch can end three ways: complete; cut short by a failed source (the micro-batches
already taken are returned, to be saved as the checkpoint's ``pending`` ones); or cut short by a
stop signal (:meth:`StopRequest.interruptible`: a source retrying or stalled can hold a fetch for
minutes, beyond a pod's 30 s grace period). A cut fetch may have moved the loader past batches
that never reached the loop, so the loop saves the loader's position from *before* the fetch:
:meth:`StepFetcher.position`, a deep copy (the loader changes its state in place).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

from lmstream.errors import DataSourceError
from lmstream.train.signals import StopFetch, StopRequest


class StepFetcher:
    """Takes ``accum`` micro-batches per step from ``run.batches`` (batches made before the
    run's RNG was restored, possibly led by a checkpoint's pending ones), then the loader."""

    def __init__(self, run):
        self.run = run
        self._batches: Iterator | None = run.batches
        # Batches in hand that the loader's position is already past (the primed batch, a
        # checkpoint's pending ones): while any is left, no loader position is exact.
        self._backlog = run.prefetched

    def position(self) -> dict | None:
        """A copy of the loader's position now, or None while it is not exact. A deep copy,
        not a pickle round trip: nothing in lmstream unpickles, even its own bytes."""
        if self._backlog:
            return None
        return copy.deepcopy(self.run.loader.state_dict())

    def fetch(self, accum: int, stop: StopRequest) -> tuple[list, DataSourceError | None, bool]:
        """The step's micro-batches, or those fetched before the source failed and its error;
        the last item is True when a stop signal cut the fetch short (the loader's workers
        then go on with their retries until the rank ends them)."""
        micro: list = []
        try:
            with stop.interruptible():
                for _ in range(accum):
                    micro.append(self._next())
        except DataSourceError as err:
            return micro, err, False
        except StopFetch:
            return micro, None, True
        return micro, None, False

    def _next(self):
        self._backlog = max(0, self._backlog - 1)
        if self._batches is None:
            self._batches = iter(self.run.loader)
        try:
            return next(self._batches)
        except StopIteration:
            pass
        self._batches = iter(self.run.loader)  # a loader that ends each epoch: start the next
        try:
            return next(self._batches)
        except StopIteration:
            raise DataSourceError(
                "the training data yielded no batches; check data.train_shards or "
                "streaming_config.json and that documents are longer than a few tokens"
            ) from None
