"""Window shuffle with a deterministic order, so exact resume needs only a small position.

A worker reads its part of the stream in windows of ``window_size`` documents and emits each
window in the order of a permutation drawn from ``(seed, epoch, worker, window index)``. The
position of a document is then ``(epoch, window, source state at the window's start, index in
the window's order)``: to resume, seek the source to the window's start, re-read the window,
re-draw the same permutation and continue at the index. Nothing else needs saving, unlike a
shuffle buffer, which datasets does not save (datasets #7901) and which would make every
checkpoint hold ``shuffle_buffer_size`` documents of text (docs/ARCHITECTURE.md, decision 1).

``iterate`` covers one pass (one epoch) of the worker's part and then ends: the loader decides
when the next pass starts (after every worker of every rank has finished this one, see
``loader.py``), and the next pass re-reads the part with new permutations, so the order within
windows changes every epoch. Without shuffling the windows are read in source order (the
permutation is the identity) and only bound how much is re-read on resume.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np

# Documents re-read on resume when shuffling is off (windows only mark positions then).
UNSHUFFLED_WINDOW = 512


class DocumentSource(Protocol):
    """One worker's part of a finite or endless document stream, able to seek.

    ``open(epoch, state)`` starts a pass at its beginning (state None) or at a position that
    ``state()`` returned; ``read(n)`` returns up to n documents (fewer only at the end of the pass;
    none at the end); ``skipped`` counts records dropped since ``open``, by reason.
    """

    skipped: Counter

    def open(self, epoch: int, state: dict | None) -> None: ...

    def state(self) -> dict: ...

    def read(self, n: int) -> list[Any]: ...


@dataclass(frozen=True)
class Position:
    """Where a document sits in a worker's shuffled stream (JSON-able through ``asdict``)."""

    epoch: int = 0
    window: int = 0
    window_start: dict | None = None  # source state at the window's first document
    index: int = 0  # index in the window's emission order
    skipped: dict = field(default_factory=dict)  # bad records counted before the window

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Position:
        return cls(**data)


def window_order(n: int, *, seed: int, epoch: int, worker: int, window: int, shuffle: bool):
    """The order in which a window of n documents is emitted: a pure function of its arguments."""
    if not shuffle:
        return np.arange(n)
    return np.random.default_rng([seed, epoch, worker, window]).permutation(n)


class WindowedDocuments:
    """Documents of one worker in window-shuffled order, each with its resumable Position."""

    def __init__(self, source: DocumentSource, *, window_size: int, seed: int, worker: int):
        self.source = source
        self.shuffle = window_size > 1
        self.window_size = window_size if self.shuffle else UNSHUFFLED_WINDOW
        self.seed = seed
        self.worker = worker
        self.skipped: Counter = Counter()

    def iterate(self, start: Position) -> Iterator[tuple[Position, Any]]:
        """Yield (position, document) from ``start`` to the end of ``start.epoch``'s pass."""
        epoch, window, index = start.epoch, start.window, start.index
        self.skipped = Counter(start.skipped)
        self.source.open(epoch, start.window_start)
        while True:
            window_start = self.source.state()
            base = dict(self.skipped)
            before = Counter(self.source.skipped)
            docs = self.source.read(self.window_size)
            if epoch == 0:  # later passes re-read the same bad records: count them once
                self.skipped.update(Counter(self.source.skipped) - before)
            if not docs:
                return
            order = window_order(
                len(docs),
                seed=self.seed,
                epoch=epoch,
                worker=self.worker,
                window=window,
                shuffle=self.shuffle,
            )
            for i in range(index, len(docs)):
                yield Position(epoch, window, window_start, i, base), docs[order[i]]
            window, index = window + 1, 0
