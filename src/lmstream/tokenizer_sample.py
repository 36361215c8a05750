"""The tokenizer's training sample of a mixture: each source in its weight's share of the characters.

A vocabulary learnt from one source's text fits that source: merges that a code or math source
needs would be missing if the tokenizer saw only web text. So `lmstream orchestrate` feeds the
BPE trainer the mixture itself, in the proportions training will use. Training's weights are
token proportions, but there is no tokenizer yet; characters are the closest measure that exists
before it (bytes would count every non-ASCII character several times).

The draw is deterministic: the next document always comes from the source furthest behind its
share (smallest characters / weight, ties to the first listed), so after every document each
source's share is within one document of its weight. A source that ends its pass (its stream ran
out or reached its ``max_samples``) before the others is read again from its start, as training
repeats a finite source (from memory when its pass was small, else re-opened), so the shares keep
the weights; the sample ends once every source has ended its first pass, so each source's size
is known (orchestrate sizes the holdout from it), and the sample holds about the last-ending
source's characters divided by its weight.
Going on with the other sources alone bent the shares (a small file beside a web corpus: 99.5%
instead of 90%); stopping at the first end left the other sources' sizes unknown. A source
without ``max_samples`` is read to its end, as one source is without ``--max-samples``. One
source of weight 1 is read exactly as before mixtures: its first ``max_samples`` clean
documents, in order.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterator

from lmstream.data.stream import DocumentStream

# A first pass under this many characters is kept in memory and replayed from there: a small
# source beside a large one may be read again thousands of times, and re-opening a dataset costs
# far more than the documents.
_KEEP_CHARS = 64_000_000


class MixtureSample:
    """Documents from several :class:`DocumentStream` objects, in the weights' character shares.

    Args:
        streams: one stream per source, in the mixture's order (each source's first pass).
        weights: each source's weight (need not sum to 1; a source of weight 0 is not read).
        max_samples: each source's documents per pass (None: the whole stream).
        batch_size: documents per batch from :meth:`batches`.
        reopen: a fresh stream of source ``i`` from its start, to read it again once it ended;
            None: an ended source leaves the others to go on alone (its share falls behind).
    """

    def __init__(
        self,
        streams: list[DocumentStream],
        weights: list[float],
        max_samples: list[int | None],
        batch_size: int,
        reopen: Callable[[int], DocumentStream] | None = None,
    ):
        if not (len(streams) == len(weights) == len(max_samples)) or not streams:
            raise ValueError("one weight and one max_samples per stream, at least one stream")
        self.streams, self.weights, self.max_samples = streams, weights, max_samples
        self.batch_size = batch_size
        self.reopen = reopen
        # The re-opened pass being read, one per source: an ended one is dropped (it held its
        # file open until the sample ended: one descriptor per pass), its bytes and retries kept.
        self.replays: list[DocumentStream | None] = [None for _ in streams]
        self.reopened = [0] * len(streams)  # times each source was re-opened
        self._replayed = [0, 0]  # bytes and retries of the dropped re-opened passes
        self.again = [0] * len(streams)  # times each source was read again from its start
        self.chars = [0] * len(streams)  # characters drawn from each source so far
        # (source, documents in the sample when it ended its first pass), in the order they ended
        self.ran_out: list[tuple[int, int]] = []
        # a source's first pass, kept while small, so reading it again costs no re-open
        self._kept: list[list[str] | None] = [[] for _ in streams]
        self._yielded = 0
        self.reading: int | None = None  # the source being read or re-opened (to name a failure)

    def _opened(self) -> list[DocumentStream]:
        return [*self.streams, *(s for s in self.replays if s is not None)]

    @property
    def documents(self) -> int:
        """Documents in the sample, repeated ones included."""
        return self._yielded

    @property
    def bytes(self) -> int:
        """Bytes read from the sources (a pass replayed from memory reads none)."""
        return self._replayed[0] + sum(s.bytes for s in self._opened())

    @property
    def retries(self) -> int:
        return self._replayed[1] + sum(s.retries for s in self._opened())

    @property
    def skipped(self) -> Counter[str]:
        """Bad records of each source's first pass (a repeated pass meets the same ones)."""
        out: Counter[str] = Counter()
        for stream in self.streams:
            out.update(stream.skipped)
        return out

    def shares(self) -> list[float]:
        """Each source's share of the characters drawn so far."""
        total = sum(self.chars)
        return [c / total if total else 0.0 for c in self.chars]

    def _behind(self, live: list[bool]) -> int:
        """The live source furthest behind its share: the smallest characters per unit of weight."""
        ratio = [
            c / w if ok else math.inf
            for c, w, ok in zip(self.chars, self.weights, live, strict=True)
        ]
        return ratio.index(min(ratio))

    def __iter__(self) -> Iterator[str]:
        readers = [self._pass(i, self.streams[i], keep=True) for i in range(len(self.streams))]
        live = [w > 0 for w in self.weights]  # a source of weight 0 is never read
        ended = [not ok for ok in live]  # each source's first pass is over
        gave = [False] * len(readers)  # the pass being read gave a document
        try:
            while any(live):
                i = self.reading = self._behind(live)
                text = next(readers[i], None)
                if text is not None:
                    self.chars[i] += len(text)
                    self._yielded += 1
                    gave[i] = True
                    yield text
                    continue
                if not ended[i]:
                    ended[i] = True
                    self.ran_out.append((i, self._yielded))
                if all(ended):
                    return
                # a pass that gave nothing (a re-opened source now empty) would be re-opened
                # without end
                again = self._read_again(i) if gave[i] else None
                gave[i] = False
                if again is None:
                    live[i] = False  # nothing to read again: the others go on alone
                    continue
                readers[i].close()
                readers[i] = again
        finally:
            for reader in readers:
                reader.close()

    def _pass(self, i: int, stream: DocumentStream, keep: bool) -> Iterator[str]:
        """One pass over source ``i`` (its first ``max_samples`` documents); ``keep``: remember
        them while they stay under _KEEP_CHARS, for the next pass."""
        limit, size = self.max_samples[i], 0
        reader = iter(stream)
        try:
            while limit is None or stream.documents < limit:
                text = next(reader, None)
                if text is None:
                    return
                kept = self._kept[i] if keep else None
                if kept is not None:
                    size += len(text)
                    if size > _KEEP_CHARS:
                        self._kept[i] = None
                    else:
                        kept.append(text)
                yield text
        finally:
            reader.close()

    def _read_again(self, i: int) -> Iterator[str] | None:
        """Source ``i`` from its start again: from memory when its pass was small, else
        re-opened; None when it cannot be re-opened. Asked only after a pass that gave a
        document (the caller's ``gave``), so a kept pass is never empty."""
        kept = self._kept[i]
        if kept is not None:
            self.again[i] += 1
            return (text for text in kept)  # a generator: closed like the others
        if self.reopen is None:
            return None
        self.again[i] += 1
        self.reopened[i] += 1
        done = self.replays[i]
        if done is not None:
            self._replayed[0] += done.bytes
            self._replayed[1] += done.retries
        self.replays[i] = self.reopen(i)
        return self._pass(i, self.replays[i], keep=False)

    def batches(self) -> Iterator[list[str]]:
        """Lists of up to ``batch_size`` documents (the trainer is faster with batches)."""
        out: list[str] = []
        for text in self:
            out.append(text)
            if len(out) >= self.batch_size:
                yield out
                out = []
        if out:
            yield out
