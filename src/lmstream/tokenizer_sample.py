"""The tokenizer's training sample of a mixture: each source in its weight's share of the characters.

A vocabulary learnt from one source's text fits that source: merges that a code or math source
needs would be missing if the tokenizer saw only web text. So `lmstream orchestrate` feeds the
BPE trainer the mixture itself, in the proportions training will use. Training's weights are
token proportions, but there is no tokenizer yet; characters are the closest measure that exists
before it (bytes would count every non-ASCII character several times).

The draw is deterministic: the next document always comes from the source furthest behind its
share (smallest characters / weight, ties to the first listed), so after every document each
source's share is within one document of its weight. When a source ends its pass (its stream
ran out or reached its ``max_samples``) the sample goes on with the others, still drawing from
the one furthest behind its share, until every source has ended its pass: each source gives all
it has within its ``max_samples``, and the shares stay as close to the weights as that data
allows (``ran_out`` records when each source ended, for orchestrate's report). A source without
``max_samples`` is read to its end, as one source is without ``--max-samples``. One source of
weight 1 is read exactly as before mixtures: its first ``max_samples`` clean documents, in order.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator

from lmstream.data.stream import DocumentStream


class MixtureSample:
    """Documents from several :class:`DocumentStream` objects, in the weights' character shares.

    Args:
        streams: one stream per source, in the mixture's order.
        weights: each source's weight (need not sum to 1; a source of weight 0 is not read).
        max_samples: each source's documents per pass (None: the whole stream).
        batch_size: documents per batch from :meth:`batches`.
    """

    def __init__(
        self,
        streams: list[DocumentStream],
        weights: list[float],
        max_samples: list[int | None],
        batch_size: int,
    ):
        if not (len(streams) == len(weights) == len(max_samples)) or not streams:
            raise ValueError("one weight and one max_samples per stream, at least one stream")
        self.streams, self.weights, self.max_samples = streams, weights, max_samples
        self.batch_size = batch_size
        self.chars = [0] * len(streams)  # characters drawn from each source so far
        # (source, documents in the sample when it ended its pass), in the order they ended
        self.ran_out: list[tuple[int, int]] = []

    @property
    def documents(self) -> int:
        return sum(s.documents for s in self.streams)

    @property
    def bytes(self) -> int:
        return sum(s.bytes for s in self.streams)

    @property
    def retries(self) -> int:
        return sum(s.retries for s in self.streams)

    @property
    def skipped(self) -> Counter[str]:
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
        readers = [iter(s) for s in self.streams]
        live = [w > 0 for w in self.weights]  # a source of weight 0 is never read
        try:
            while any(live):
                i = self._behind(live)
                limit = self.max_samples[i]
                text = None
                if limit is None or self.streams[i].documents < limit:
                    text = next(readers[i], None)
                if text is None:
                    live[i] = False
                    self.ran_out.append((i, self.documents))
                    continue
                self.chars[i] += len(text)
                yield text
        finally:
            for reader in readers:
                reader.close()

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
