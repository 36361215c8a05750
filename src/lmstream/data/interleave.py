"""A pass's reading order when shuffling: shards in a per-epoch order, many read interleaved.

A window shuffle alone keeps the source's order at the scale of the window: consecutive batches
come from the same stretch of the source and every epoch repeats the last one's order (issue
#20: 0.998 / 0.990 correlations). So when shuffling, a pass is read like this, identically on
every worker (the round-robin deal of ``documents.TextSource`` needs one sequence everywhere to
stay disjoint and complete):

1. the source's shards (``IterableDataset.n_shards``: one per file for local files and URLs, the
   data files datasets resolves for a hub id) are put in an order drawn from ``(seed, epoch)``;
2. ``STREAMS`` of them are open at once and read round-robin, ``block`` documents at a time;
   when one ends, the next shard of the order takes its place (datasets' ``shuffle`` does the
   same with ``max_buffer_input_shards``, 10 by default, and blocks of ``buffer_size // 10``);
3. from the second pass on, each shard is read from a point drawn from ``(seed, epoch)`` to its
   end and then from its start up to that point (a rotation): otherwise a document's place in
   every pass follows its place in its shard, and with few shards the passes stay correlated;
4. the worker's window shuffle (``shuffle.py``) then permutes what it kept.

``max_samples`` and the holdout stay defined in source order: the clean documents of the first
shards are counted (:func:`count_documents`, bounded by max(holdout, max_samples) documents) to
find, per shard, how many of its first documents are held out and how many are in the pass.
Rotating needs every shard's size: one counting read of the source, done once per loader (see
``worker.PackedDataset.prepare``). A shard holding held-out documents is never rotated.

The position is small and exact: the shards open (each a ``DocumentStream`` state and which of
its two parts is read), the next shard of the order, whose turn it is and how much of its block
was taken. The price: ``STREAMS`` readers per worker, each holding one read batch
(``stream_batch_size`` records), and a rotated shard's first part is read twice (once to get to
the rotation point).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import datasets
import numpy as np

from lmstream.data.stream import DocumentStream

STREAMS = 16  # shards read at once (datasets' shuffle reads up to 10)
_ORDER_TAG = 20  # keeps these draws apart from the windows' (seed, epoch, worker, window)

Cut = tuple[int, int | None]  # (held-out first documents, documents in the pass or None = all)


def shard(ds: datasets.IterableDataset, index: int) -> datasets.IterableDataset:
    """Shard ``index`` of the source alone, with the source's tags (name, remote)."""
    part = ds.shard(num_shards=ds.n_shards, index=index, contiguous=True)
    for name in ("_lmstream_source", "_lmstream_remote"):
        if hasattr(ds, name):
            setattr(part, name, getattr(ds, name))
    return part


def count_documents(ds, make_stream, *, until: int | None) -> list[int | None]:
    """Clean documents per shard, in source order, counted until ``until`` documents have been
    seen (None: all of them); the shards after that are not read (None)."""
    counts: list[int | None] = []
    total = 0
    for i in range(ds.n_shards):
        if until is not None and total >= until:
            counts.append(None)
            continue
        count = 0
        for _ in make_stream(shard(ds, i)):
            count += 1
            if until is not None and total + count >= until:
                break
        counts.append(count)
        total += count
    return counts


def cuts_of(counts: list[int | None], *, skip_first: int, max_samples: int | None) -> list[Cut]:
    """Per shard: its first documents held out, and its documents in the pass (None: all).

    ``counts`` must cover at least the first max(skip_first, max_samples) documents."""
    cuts: list[Cut] = []
    start = 0  # clean documents in the shards before this one
    for count in counts:
        if count is None:  # past the counted prefix: wholly in the pass, or wholly cut
            cuts.append((0, None if max_samples is None else 0))
            continue
        limit = None if max_samples is None else max(0, min(count, max_samples - start))
        cuts.append((min(count, max(0, skip_first - start)), limit))
        start += count
    return cuts


def shard_order(n: int, *, seed: int, epoch: int) -> list[int]:
    """The order in which a pass reads the source's n shards: a pure function of its arguments."""
    return np.random.default_rng([seed, epoch, _ORDER_TAG]).permutation(n).tolist()


def rotations(counts: list[int | None], cuts: list[Cut], *, seed: int, epoch: int) -> list[int]:
    """Per shard, the document it is read from this pass (then to its end, then from its start
    up to there). Without it a document's place in a pass follows its place in its shard in
    every epoch (epoch-to-epoch rank correlation about (open shards / shards)^2). Epoch 0, and
    shards that hold held-out documents or whose size is unknown, are read from their start."""
    # Stratified: the shards' points fall one in each 1/n of the range, in a random order, so
    # that together they undo the within-shard order evenly (independent draws leave a spread
    # of about +-0.1 in the epoch-to-epoch correlation with 16 shards).
    rng = np.random.default_rng([seed, epoch, _ORDER_TAG, 1])
    draws = (rng.permutation(len(cuts)) + rng.random(len(cuts))) / max(1, len(cuts))
    out = []
    for count, (skip, limit), u in zip(counts, cuts, draws, strict=True):
        size = count if limit is None or count is None else min(count, limit)
        rotate = epoch > 0 and skip == 0 and size is not None and size > 1
        out.append(int(u * size) if rotate else 0)
    return out


class InterleavedPass:
    """A pass's documents (holdout skipped, ``max_samples`` applied) in shuffled reading order."""

    def __init__(self, ds, make_stream, counts: list[int | None], cuts: list[Cut], *,
                 seed: int, epoch: int, block: int):  # fmt: skip
        self.ds, self.make_stream, self.cuts = ds, make_stream, cuts
        self.block = max(1, block)
        self.rotation = rotations(counts, cuts, seed=seed, epoch=epoch)
        order = shard_order(len(cuts), seed=seed, epoch=epoch)
        self.order = [i for i in order if cuts[i][1] != 0]  # shards wholly past max_samples
        self.next = min(STREAMS, len(self.order))
        # [shard, stream, part]: part 0 reads from the rotation point on, part 1 up to it
        self.slots: list[list] = [[i, None, 0] for i in self.order[: self.next]]
        self.turn = 0
        self.taken = 0  # documents taken from the current block
        self.done_skipped: Counter = Counter()  # bad records of shards already read

    # ---- position

    def state_dict(self) -> dict:
        return {
            "next": self.next,
            "slots": [[i, s.state_dict() if s else None, part] for i, s, part in self.slots],
            "turn": self.turn,
            "taken": self.taken,
            "skipped": dict(self.done_skipped),
        }

    def load_state_dict(self, state: dict) -> None:
        self.next, self.turn, self.taken = state["next"], state["turn"], state["taken"]
        self.done_skipped = Counter(state["skipped"])
        self.slots = [
            [i, self._stream(i, st) if st else None, part] for i, st, part in state["slots"]
        ]

    @property
    def skipped(self) -> Counter:
        total = Counter(self.done_skipped)
        for _, stream, part in self.slots:
            if stream is not None and part == 0:
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
            index, stream, part = slot
            skip, limit = self.cuts[index]
            point = self.rotation[index]
            # Documents lo..hi-1 of the shard (its clean-document numbers) are this part's.
            lo, hi = (max(skip, point), limit) if part == 0 else (0, point)
            text = None
            if hi is None or stream.documents < hi:
                text = next(stream.it, None)
            if text is None:  # this part is done: the shard's next part, or the order's next
                if part == 0:  # (part 1 re-reads records part 0 read, and counted, to get on)
                    self.done_skipped.update(stream.skipped)
                stream.it.close()
                if part == 0 and point > 0:
                    self.slots[self.turn] = [index, None, 1]
                elif self.next < len(self.order):
                    self.slots[self.turn] = [self.order[self.next], None, 0]
                    self.next += 1
                else:
                    del self.slots[self.turn]
                    self.turn, self.taken = (self.turn if self.turn < len(self.slots) else 0), 0
                continue
            if stream.documents - 1 < lo:  # held out, or before the rotation point
                continue
            self.taken += 1
            if self.taken >= self.block:
                self.turn, self.taken = (self.turn + 1) % len(self.slots), 0
            yield text
