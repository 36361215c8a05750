"""A pass's reading order when shuffling: shards in a per-epoch order, several read interleaved.

A window shuffle alone keeps the source's order at the scale of the window: consecutive batches
come from the same stretch of the source and every epoch repeats the last one's order (issue
#20: 0.998 / 0.990 correlations). So when shuffling, a pass is read like this, identically on
every worker (the round-robin deal of ``documents.TextSource`` needs one sequence everywhere to
stay disjoint and complete):

1. the source's shards (``IterableDataset.n_shards``: one per file for local files and URLs, the
   data files datasets resolves for a hub id) are put in an order drawn from ``(seed, epoch)``;
2. ``streams`` of them are open at once and read round-robin, ``block`` documents at a time;
   when one ends, the next shard of the order takes its place (datasets' ``shuffle`` does the
   same with ``max_buffer_input_shards``, 10 by default, and blocks of ``buffer_size // 10``);
3. the worker's window shuffle (``shuffle.py``) then permutes what it kept.

``max_samples`` and the holdout stay defined in source order: :func:`prefix_cuts` counts the
clean documents of the first shards (bounded by max(holdout, max_samples) documents) to find,
per shard, how many of its first documents are held out and how many belong to the pass.

The position is small and exact: the shards open (each a ``DocumentStream`` state), the next
shard of the order, whose turn it is and how much of its block was taken.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import datasets
import numpy as np

from lmstream.data.stream import DocumentStream

STREAMS = 8  # shards read at once (datasets' shuffle reads up to 10)
_ORDER_TAG = 20  # keeps the shard order's random stream apart from the windows' ((seed, epoch, worker, window))

Cut = tuple[int, int | None]  # (held-out first documents, documents in the pass or None = all)


def shard(ds: datasets.IterableDataset, index: int) -> datasets.IterableDataset:
    """Shard ``index`` of the source alone, with the source's tags (name, remote)."""
    part = ds.shard(num_shards=ds.n_shards, index=index, contiguous=True)
    for name in ("_lmstream_source", "_lmstream_remote"):
        if hasattr(ds, name):
            setattr(part, name, getattr(ds, name))
    return part


def prefix_cuts(ds, make_stream, *, skip_first: int, max_samples: int | None) -> list[Cut]:
    """Per shard (source order): its documents held out, and its documents in the pass.

    Shards are counted in source order only until ``max(skip_first, max_samples)`` clean
    documents are seen; the shards after that are wholly in the pass (or wholly cut when
    ``max_samples`` is set).
    """
    target = max(skip_first, max_samples or 0)
    cuts: list[Cut] = []
    start = 0  # clean documents in the shards before this one (while below target)
    for i in range(ds.n_shards):
        skip = max(0, skip_first - start)
        limit = None if max_samples is None else max(0, max_samples - start)
        cuts.append((skip, limit))
        if start < target:
            count = 0
            for _ in make_stream(shard(ds, i)):
                count += 1
                if start + count >= target:
                    break
            start += count
    return cuts


def shard_order(n: int, *, seed: int, epoch: int) -> list[int]:
    """The order in which a pass reads the source's n shards: a pure function of its arguments."""
    return np.random.default_rng([seed, epoch, _ORDER_TAG]).permutation(n).tolist()


class InterleavedPass:
    """A pass's documents (holdout skipped, ``max_samples`` applied) in shuffled reading order."""

    def __init__(self, ds, make_stream, cuts: list[Cut], *, seed: int, epoch: int, block: int):
        self.ds, self.make_stream, self.cuts = ds, make_stream, cuts
        self.block = max(1, block)
        order = shard_order(len(cuts), seed=seed, epoch=epoch)
        self.order = [i for i in order if cuts[i][1] != 0]  # shards wholly past max_samples
        self.next = min(STREAMS, len(self.order))
        self.slots: list[list] = [[i, None] for i in self.order[: self.next]]  # [shard, stream]
        self.turn = 0
        self.taken = 0  # documents taken from the current block
        self.done_skipped: Counter = Counter()  # bad records of shards already read

    # ---- position

    def state_dict(self) -> dict:
        return {
            "next": self.next,
            "slots": [[i, s.state_dict() if s else None] for i, s in self.slots],
            "turn": self.turn,
            "taken": self.taken,
            "skipped": dict(self.done_skipped),
        }

    def load_state_dict(self, state: dict) -> None:
        self.next, self.turn, self.taken = state["next"], state["turn"], state["taken"]
        self.done_skipped = Counter(state["skipped"])
        self.slots = [[i, self._stream(i, st) if st else None] for i, st in state["slots"]]

    @property
    def skipped(self) -> Counter:
        total = Counter(self.done_skipped)
        for _, stream in self.slots:
            if stream is not None:
                total.update(stream.skipped)
        return total

    # ---- reading

    def _stream(self, index: int, state: dict | None) -> DocumentStream:
        stream = self.make_stream(shard(self.ds, index))
        if state is not None:
            stream.load_state_dict(state)
        stream.it = iter(stream)  # each open shard keeps its own reader
        return stream

    def __iter__(self) -> Iterator[str]:
        while self.slots:
            slot = self.slots[self.turn]
            if slot[1] is None:
                slot[1] = self._stream(slot[0], None)
            index, stream = slot
            skip, limit = self.cuts[index]
            text = None
            if limit is None or stream.documents < limit:
                text = next(stream.it, None)
            if text is None:  # this shard is done: the next of the order takes its place
                self.done_skipped.update(stream.skipped)
                stream.it.close()
                if self.next < len(self.order):
                    self.slots[self.turn] = [self.order[self.next], None]
                    self.next += 1
                else:
                    del self.slots[self.turn]
                    self.turn, self.taken = (self.turn if self.turn < len(self.slots) else 0), 0
                continue
            if stream.documents - 1 < skip:  # held out (the holdout is in source order)
                continue
            self.taken += 1
            if self.taken >= self.block:
                self.turn, self.taken = (self.turn + 1) % len(self.slots), 0
            yield text
