"""A data mixture's batches: one pipeline per source in each global worker, and a mixer.

Each global worker (see ``loader.py``) runs, for every source, the same pipeline a single
source has (its round-robin part of the source, ``documents.TextSource`` or token shards, the
window shuffle, ``encode_batch`` in chunks) and a deterministic mixer that draws the next
document from the source furthest behind its token share: the largest ``weight * total -
drawn`` (tokens drawn so far, each document with its ``<|endoftext|>``; ties go to the earlier
source; weight-0 sources are never drawn). A source is never more than one document ahead of
its share and the others make up the rest, so over any window of T tokens each share is off
by at most about (sources x longest document) / T: under 1 point over 1M tokens for documents
up to a few thousand tokens. The order is a pure function of the seed, weights and sources.

**Epochs.** The mixture's epochs are passes over its *primary* source (the largest weight, the
first on ties), with the loader's passes as for one source (``loader.py``): each worker mixes
until the mixer picks the primary and the worker's part of the primary's pass is used up; it
then emits what it packed as a final batch (padding ignored by the loss) and stops, and the
rank waits for its other workers and the other ranks. So an epoch trains every primary document
of the pass once, for any worker and rank count, and a worker never draws secondary documents
past its part of the epoch (that would skew the shares toward them while the others finish):
every document it drew was drawn at the weights. The other sources are not cut at the epoch's
end: a finite one that ends restarts as its own next epoch (new window orders, new shard order)
while the others go on, and at the next pass each worker continues them where it left them,
with its mixer's counts (the worker's *carry*, sent with its final batch and kept in the
loader's state). A batch's ``epoch`` is the pass, which ``scheduler.total_epochs`` counts; every
source's epoch travels with the batch (``epoch/NAME``).

**Resume.** Every packed document is tagged with what the mixer knew when it drew it: the
tokens drawn per source before it and each source's next position (the document after its
last drawn one, or the start of its epoch). The worker's state is the tag of the document
holding the next token plus the offset into it: on load, each source re-opens at its saved
position, the mixer takes the saved counts, and the saved document is drawn first (its first
``offset`` tokens skipped), after which the mixer draws exactly what it drew before. With
changed weights or sources (a resume that changes the mix), kept sources continue from their
positions, new ones start at their beginning, and the mixer's counts restart from zero so the
new weights apply to the tokens from here on. A resume that makes another source the primary
continues it where it was if that is in the current pass, else from the pass's start; every
pass begun afterwards reads the new primary's whole part of it.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from lmstream.data.documents import TextSource, shuffled_reading
from lmstream.data.packing import Batch, Packer, encode_documents
from lmstream.data.shuffle import Position, WindowedDocuments
from lmstream.data.token_shards import TokenShards, TokenShardSource
from lmstream.data.worker import _CHUNK_CHARS, _CHUNK_DOCS, StreamSettings
from lmstream.errors import CheckpointError, DataSourceError


@dataclass(frozen=True)
class MixSettings:
    """The sources of a mixture (``settings[k]`` holds source k's plan, holdout and exclusions;
    the batch shape, seed and ranks are the same in all)."""

    names: tuple[str, ...]
    weights: tuple[float, ...]
    settings: tuple[StreamSettings, ...]

    @property
    def primary(self) -> int:
        """The source whose passes are the mixture's epochs: the largest weight, first on ties."""
        return max(range(len(self.weights)), key=lambda k: (self.weights[k], -k))


@dataclass
class SourceBatch(Batch):
    """A validation batch of one source of a mixture (``val_loss/NAME``)."""

    source: str = ""


@dataclass
class MixBatch(Batch):
    """A mixture's training batch, with its target tokens per source (``tokens_seen/NAME``)
    and every source's epoch (``epoch/NAME``), in the mixture's source order."""

    source_tokens: tuple[int, ...] = ()
    source_epochs: tuple[int, ...] = ()


def choose(drawn: list[int], weights: tuple[float, ...]) -> int:
    """The source furthest behind its share of the tokens drawn so far (ties: lowest index)."""
    total = sum(drawn)
    best, deficit = -1, 0.0
    for k, w in enumerate(weights):
        if w <= 0:
            continue
        d = w * total - drawn[k]
        if best < 0 or d > deficit:
            best, deficit = k, d
    return best


def _after(pos: Position) -> Position:
    """The position of the document after ``pos`` (the window is re-read to skip to it)."""
    return replace(pos, index=pos.index + 1)


class _Pipe:
    """One source's documents for one global worker, pass after pass, tokenized ahead."""

    def __init__(
        self, s: StreamSettings, tokenizer: Any, name: str, worker: int, workers: int,
        *, primary: bool, sizes: list | None,
    ):  # fmt: skip
        self.name, self.tokenizer = name, tokenizer
        self.worker, self.workers = worker, workers
        self.primary = primary  # its pass ends the worker's pass instead of restarting
        self.next = Position()  # the next document to draw: where a resume re-opens it
        self._windows = WindowedDocuments(
            _open(s, worker, workers, sizes), window_size=s.window_size, seed=s.seed,
            worker=worker,
        )  # fmt: skip
        self._docs = None
        self._buf: deque = deque()

    @property
    def skipped(self) -> Counter:
        return self._windows.skipped

    def draw(self) -> tuple[Position, np.ndarray] | None:
        """The next document, or None once the primary's part of the pass is used up."""
        epoch = self.next.epoch
        while not self._buf:
            self._fill()
            if self.primary and self.next.epoch != epoch:
                return None
        pos, tokens = self._buf.popleft()
        self.next = _after(pos)
        return pos, tokens

    def _fill(self) -> None:
        if self._docs is None:
            self._docs = self._windows.iterate(self.next)
            self._fresh = self.next == Position(epoch=self.next.epoch)
        positions, texts, chars = [], [], 0
        while not texts or (chars < _CHUNK_CHARS and len(texts) < _CHUNK_DOCS):
            item = next(self._docs, None)
            if item is None:
                break
            positions.append(item[0])
            texts.append(item[1])
            chars += len(item[1]) if isinstance(item[1], str) else 4 * len(item[1])
        if not texts:  # the pass is over: the source's next epoch, the others go on
            if self._fresh:
                raise DataSourceError(
                    f"data source {self.name!r}: data worker {self.worker} of {self.workers} got "
                    f"no documents in its epoch {self.next.epoch}; the source has fewer "
                    "documents than there are data workers (ranks x data.num_workers): lower "
                    "data.num_workers or data.validation_documents, or give it more data"
                )
            self.next, self._docs = Position(epoch=self.next.epoch + 1), None
            return
        self._fresh = False
        docs = encode_documents(self.tokenizer, texts) if isinstance(texts[0], str) else texts
        for pos, tokens in zip(positions, docs, strict=True):
            if len(tokens):
                self._buf.append((pos, tokens))
            else:
                self._windows.skipped["no_tokens"] += 1


def _open(s: StreamSettings, worker: int, workers: int, sizes: list | None):
    p = s.plan
    if p.kind == "tokens":
        shards = TokenShards(p.token_paths)
        return TokenShardSource(shards, worker=worker, workers=workers, skip_first=s.skip_first)
    return TextSource(
        p.spec, p.split, worker=worker, workers=workers, max_samples=p.max_samples,
        skip_first=s.skip_first, exclude=s.exclude, sizes=sizes,
        **shuffled_reading(s.window_size, s.seed),
    )  # fmt: skip


@dataclass(frozen=True)
class _Drawn:
    """A packed document's tag: its source, and the mixer's counts and every source's next
    position just before it was drawn (what resume restores)."""

    source: int
    drawn: tuple[int, ...]
    heads: tuple[Position, ...]


class MixedDataset(IterableDataset):
    """Endless batches of one global worker's mixture (``loader.TrainLoader``'s dataset).

    ``settings`` is the primary source's (batch shape, seed, ranks: shared by all sources)."""

    def __init__(self, mix: MixSettings, tokenizer: Any):
        self.mix, self.tokenizer = mix, tokenizer
        self.settings = mix.settings[mix.primary]
        self.epoch = 0  # the pass (set by the loader before each)
        self.carry: dict[int, dict] = {}  # global worker -> its state at its last pass's end
        self.legacy_name: str | None = None  # resuming a one-source state: its source's name
        self.shard_sizes: list | None = None  # per source, once counted

    def prepare(self, epoch: int) -> None:
        """Before pass ``epoch`` > 0, in the main process: count each shuffled text source's
        shard sizes once (rotating shards needs them), so that the workers, new each pass, do
        not each count them again every pass."""
        if epoch == 0 or self.shard_sizes is not None:
            return
        self.shard_sizes = [
            TextSource(s.plan.spec, s.plan.split, max_samples=s.plan.max_samples).shard_sizes()
            if s.plan.kind == "text" and s.window_size > 1 else None
            for s in self.mix.settings
        ]  # fmt: skip

    def __iter__(self) -> MixedIterator:
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        s = self.settings
        return MixedIterator(self, s.rank * nw + wid, s.world_size * nw)


class MixedIterator:
    """One global worker's mixed batches; items are (rows, valid tokens, epoch, worker,
    skipped counts, {"tokens": target tokens per source, "epochs": epoch per source})."""

    def __init__(self, dataset: MixedDataset, worker: int, workers: int):
        self.mix, self.tokenizer = dataset.mix, dataset.tokenizer
        self.legacy_name = dataset.legacy_name
        self.worker, self.workers = worker, workers
        self.epoch = dataset.epoch  # the pass: the primary's part of it is this worker's part
        n = len(self.mix.names)
        s = self.mix.settings[0]
        self._row, self._batch = s.sequence_length + 1, s.batch_size
        self._packer = Packer(self._row, s.eot_id)
        sizes = dataset.shard_sizes or [None] * n
        self._pipes = [
            _Pipe(st, self.tokenizer, name, worker, workers,
                  primary=k == self.mix.primary, sizes=sizes[k])
            for k, (st, name) in enumerate(zip(self.mix.settings, self.mix.names, strict=True))
        ]  # fmt: skip
        self._drawn = [0] * n
        self._force: tuple[int, int] | None = None  # (source, offset): resume's first document
        self._segments: deque = deque()  # (start, end, source, epoch) in packed-stream tokens
        self._added = self._taken = 0
        self._done = False  # this worker's part of the pass is used up
        carry = dataset.carry.get(worker)
        if carry is not None:  # the other sources go on where the last pass left them
            self._restore({**carry, "source": None, "offset": 0})
            # A pass begins here: the primary's whole part of it, also when the carry's primary
            # was another source (weights changed on resume) and this one's own epoch count,
            # as a secondary, merely equals the pass's number.
            self._pipes[self.mix.primary].next = Position(epoch=self.epoch)
            self._epochs[self.mix.primary] = self.epoch
        else:
            self._align()
            self._epochs = [p.next.epoch for p in self._pipes]  # per source: its last document's

    # ---- position

    def state_dict(self) -> dict:
        head = self._packer.position()
        if head is None:  # nothing drawn yet (or the resume's document not yet re-drawn)
            source, offset = (None, 0) if self._force is None else self._force
            drawn, heads = self._drawn, [p.next for p in self._pipes]
        else:
            tag, offset = head
            source, drawn, heads = tag.source, tag.drawn, tag.heads
        return {
            "worker": self.worker,
            "workers": self.workers,
            "names": list(self.mix.names),
            "weights": list(self.mix.weights),
            "source": source,
            "offset": offset,
            "drawn": list(drawn),
            "heads": [h.to_dict() for h in heads],
            "done": self._done,
        }

    def load_state_dict(self, state: dict) -> None:
        if (state["worker"], state["workers"]) != (self.worker, self.workers):
            raise CheckpointError(
                f"data state belongs to worker {state['worker']} of {state['workers']}, "
                f"not {self.worker} of {self.workers}"
            )
        if "position" in state:  # a one-source run's state: that source continues
            state = self._from_single(state)
        self._restore(state)
        self._done = bool(state.get("done", False))

    def _restore(self, state: dict) -> None:
        names, current = list(state["names"]), list(self.mix.names)
        heads = dict(zip(names, state["heads"], strict=True))
        for k, name in enumerate(current):
            pos = heads.get(name)
            self._pipes[k].next = Position.from_dict(pos) if pos else Position()
        self._align()
        self._epochs = [p.next.epoch for p in self._pipes]
        source = state["source"]
        kept = source is not None and names[source] in current
        self._force = (current.index(names[source]), int(state["offset"])) if kept else None
        same = names == current and list(state["weights"]) == list(self.mix.weights)
        if same:
            self._drawn = [int(d) for d in state["drawn"]]
        else:  # a changed mix restarts the counts: the new weights apply from here on
            self._drawn = [0] * len(current)
            if self._force is not None:  # the resumed document's trained part is not counted
                self._drawn[self._force[0]] = -self._force[1]

    def _align(self) -> None:
        """The primary reads its part of this pass: from its position if that is in the pass,
        else from the pass's start (its previous part ended, or a resume made it primary)."""
        pipe = self._pipes[self.mix.primary]
        if pipe.next.epoch != self.epoch:
            pipe.next = Position(epoch=self.epoch)

    def _from_single(self, state: dict) -> dict:
        name = self.legacy_name
        if name is None:
            raise CheckpointError(
                "the checkpoint's data state is a one-source run's and none of this mixture's "
                "sources matches its source; keep that source (same files or dataset) to resume"
            )
        if state.get("done"):  # its part of the pass was used up: it starts the next one
            head = Position(epoch=Position.from_dict(state["position"]).epoch + 1).to_dict()
            # As the primary, this worker's part of the pass is over too.
            done = name == self.mix.names[self.mix.primary]
            return {"names": [name], "weights": [1.0], "source": None, "offset": 0,
                    "drawn": [0], "heads": [head], "done": done}  # fmt: skip
        return {
            "names": [name], "weights": [1.0], "source": 0, "offset": int(state["offset"]),
            "drawn": [0], "heads": [state["position"]],
        }  # fmt: skip

    # ---- reading

    def __iter__(self) -> MixedIterator:
        return self

    def __next__(self):
        if self._done:
            raise StopIteration
        need = self._batch * self._row
        while len(self._packer) < need and self._draw():
            pass
        if len(self._packer) <= 1:  # only at a pass's start: the primary's part is empty
            self._done = True
            raise StopIteration
        start, valid = self._taken, min(len(self._packer), need)
        if valid == need:
            rows = self._packer.take(self._batch)
            # So the position names a document; a lone <|endoftext|> left at the end of the
            # part has no target: the part ends with this batch.
            while len(self._packer) <= 1 and not self._done:
                self._done = not self._draw()
        else:  # the part's last tokens: one final batch, padded (targets of padding ignored)
            rows = np.full((self._batch, self._row), self._packer.eot_id, dtype=np.int64)
            full = self._packer.rows_ready
            rows[:full] = self._packer.take(full) if full else rows[:0]
            rest = self._packer.carry()
            rows[full, : len(rest)] = rest
            self._done = True
        if self._done:  # what the next pass continues from (the loader keeps it)
            self._packer = Packer(self._row, self._packer.eot_id)
        self._taken += need
        tokens = self._count(start, start + valid)
        skipped = Counter()
        for pipe in self._pipes:
            skipped.update(pipe.skipped)
        extra = {"tokens": tokens, "epochs": list(self._epochs)}
        if self._done:
            extra["end"] = self.state_dict()
        return torch.from_numpy(rows), valid, self.epoch, self.worker, dict(skipped), extra

    def _draw(self) -> bool:
        """Pack the next document; False once the primary's part of the pass is used up."""
        if self._force is not None:
            k, offset = self._force
        else:
            k, offset = choose(self._drawn, self.mix.weights), 0
        tag = _Drawn(k, tuple(self._drawn), tuple(p.next for p in self._pipes))
        drawn = self._pipes[k].draw()
        if drawn is None:
            return False
        pos, tokens = drawn
        self._force = None
        self._packer.add(tokens, tag, offset)
        n = len(tokens) + 1 - offset
        self._drawn[k] += len(tokens) + 1
        self._segments.append((self._added, self._added + n, k, pos.epoch))
        self._added += n
        return True

    def _count(self, lo: int, hi: int) -> list[int]:
        """Target tokens per source among packed-stream tokens lo..hi-1 (a batch's rows: the
        first token of each row is an input only), and the sources' epochs at ``hi``."""
        out = [0] * len(self._pipes)
        for start, end, k, epoch in self._segments:
            if start >= hi:
                break
            a, b = max(start, lo), min(end, hi)
            if a < b:
                # Row starts lo + r * row in [a, b): their tokens are no row's target.
                starts = -(-(b - lo) // self._row) - -(-(a - lo) // self._row)
                out[k] += (b - a) - starts
            self._epochs[k] = max(self._epochs[k], epoch)
        while self._segments and self._segments[0][1] <= hi:
            self._segments.popleft()
        return out
