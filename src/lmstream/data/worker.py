"""One global worker's part of a pass, packed into batches: the DataLoader's dataset.

:class:`PackedIterator` reads its worker's documents (``documents.TextSource`` or token
shards) through the window shuffle (``shuffle.py``), tokenizes them in chunks with
``encode_batch`` and packs them (``packing.py``). Its state is a small position (see
``loader.py``). At the end of its part of the pass it emits the remaining tokens as one final
batch, padded with ``<|endoftext|>`` whose targets are -100 (ignored by the loss), and stops:
nothing of the pass is carried into the next one, so an epoch holds exactly its documents.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from lmstream.data.documents import DataPlan, TextSource, shuffled_reading
from lmstream.data.packing import Batch, Packer, encode_documents
from lmstream.data.shuffle import Position, WindowedDocuments
from lmstream.data.token_shards import TokenShards, TokenShardSource
from lmstream.errors import CheckpointError, DataSourceError

_CHUNK_CHARS = 64_000  # characters tokenized per encode_batch call
_CHUNK_DOCS = 256


@dataclass(frozen=True)
class StreamSettings:
    """Everything a worker needs to rebuild its part of the stream (picklable)."""

    plan: DataPlan
    batch_size: int
    sequence_length: int
    window_size: int
    seed: int
    rank: int
    world_size: int
    eot_id: int
    exclude: frozenset[bytes] = frozenset()
    skip_first: int = 0


class PackedDataset(IterableDataset):
    """Batches of packed rows, shape (batch_size, sequence_length + 1), from one global worker's
    part of pass ``epoch`` (set by :class:`TrainLoader` before each pass)."""

    def __init__(self, settings: StreamSettings, tokenizer: Any):
        self.settings = settings
        self.tokenizer = tokenizer
        self.epoch = 0
        self.shard_sizes: list | None = None  # clean documents per source shard, once known

    def prepare(self, epoch: int) -> None:
        """Before pass ``epoch``, in the main process: a shuffled text source rotates its shards
        from the second pass on, which needs their sizes; count them here once (one read of
        the source) so that the workers, new each pass, do not each count them every pass."""
        s = self.settings
        if epoch > 0 and s.plan.kind == "text" and s.window_size > 1 and not self.shard_sizes:
            source = TextSource(s.plan.spec, s.plan.split, max_samples=s.plan.max_samples)
            self.shard_sizes = source.shard_sizes()

    def __iter__(self) -> PackedIterator:
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        s = self.settings
        return PackedIterator(self, s.rank * nw + wid, s.world_size * nw)


class PackedIterator:
    """One global worker's batches of one pass; its ``state_dict`` is a position, taken between
    batches. Each item is (rows, valid tokens, epoch, worker, skipped counts)."""

    def __init__(self, dataset: PackedDataset, worker: int, workers: int):
        self.settings, self.tokenizer = dataset.settings, dataset.tokenizer
        self.shard_sizes = dataset.shard_sizes
        self.worker, self.workers = worker, workers
        self._start, self._offset = Position(epoch=dataset.epoch), 0
        self._done = False  # this worker's part of the pass is used up
        self._docs = None  # opened lazily at the first batch, after a possible load_state_dict
        self._packer = Packer(self.settings.sequence_length + 1, self.settings.eot_id)

    def state_dict(self) -> dict:
        return {
            "worker": self.worker,
            "workers": self.workers,
            "position": self._start.to_dict(),
            "offset": self._offset,
            "done": self._done,
        }

    def load_state_dict(self, state: dict) -> None:
        if (state["worker"], state["workers"]) != (self.worker, self.workers):
            raise CheckpointError(
                f"data state belongs to worker {state['worker']} of {state['workers']}, "
                f"not {self.worker} of {self.workers}"
            )
        self._start = Position.from_dict(state["position"])
        self._offset = int(state["offset"])
        self._done = bool(state.get("done", False))
        self._docs = None
        self._packer = Packer(self.settings.sequence_length + 1, self.settings.eot_id)

    def _source(self):
        s, p = self.settings, self.settings.plan
        if p.kind == "tokens":
            shards = TokenShards(p.token_paths)
            return TokenShardSource(
                shards, worker=self.worker, workers=self.workers, skip_first=s.skip_first
            )
        return TextSource(
            p.spec, p.split, worker=self.worker, workers=self.workers,
            max_samples=p.max_samples, skip_first=s.skip_first, exclude=s.exclude,
            sizes=self.shard_sizes, **shuffled_reading(s.window_size, s.seed),
        )  # fmt: skip

    def __iter__(self) -> PackedIterator:
        return self

    def __next__(self) -> tuple[np.ndarray, int, int, int, dict]:
        s = self.settings
        if self._done:
            raise StopIteration
        if self._docs is None:
            self._windows = WindowedDocuments(
                self._source(), window_size=s.window_size, seed=s.seed, worker=self.worker
            )
            self._fresh = self._start == Position(epoch=self._start.epoch) and not self._offset
            self._docs = self._windows.iterate(self._start)
            self._first_start = self._offset
        row = s.sequence_length + 1
        need = s.batch_size * row
        while len(self._packer) < need and self._fill():
            pass
        if len(self._packer) <= 1:
            # The part is used up; a lone end-of-text token has no target to train on.
            self._done = True
            if self._fresh:
                raise DataSourceError(
                    f"data worker {self.worker} of {self.workers} got no documents in epoch "
                    f"{self._start.epoch}: the source has fewer documents than there are data "
                    "workers (ranks x data.num_workers); lower data.num_workers or "
                    "data.validation_documents, or use more data"
                )
            raise StopIteration
        self._fresh = False
        epoch = self._packer.position()[0].epoch
        valid = min(len(self._packer), need)
        if valid == need:
            rows = self._packer.take(s.batch_size)
            while not len(self._packer) and not self._done:  # so the position names a document
                self._done = not self._fill()  # read already; done: the pass ended right here
        else:  # the part's last tokens: one final batch, padded (targets of padding ignored)
            rows = np.full((s.batch_size, row), s.eot_id, dtype=np.int64)
            full = self._packer.rows_ready
            rows[:full] = self._packer.take(full) if full else rows[:0]
            rest = self._packer.carry()
            rows[full, : len(rest)] = rest
            self._packer = Packer(row, s.eot_id)
            self._done = True
        if len(self._packer):
            self._start, self._offset = self._packer.position()
        return rows, valid, epoch, self.worker, dict(self._windows.skipped)  # as numpy: see loader

    def _fill(self) -> bool:
        """Read, tokenize and pack the next chunk of documents; False at the end of the pass."""
        positions, docs, chars = [], [], 0
        while not docs or (chars < _CHUNK_CHARS and len(docs) < _CHUNK_DOCS):
            item = next(self._docs, None)
            if item is None:
                break
            positions.append(item[0])
            docs.append(item[1])
            chars += len(item[1]) if isinstance(item[1], str) else 4 * len(item[1])
        if not docs:
            return False
        if isinstance(docs[0], str):
            docs = encode_documents(self.tokenizer, docs)
        for pos, tokens in zip(positions, docs, strict=True):
            if not len(tokens):
                self._windows.skipped["no_tokens"] += 1
                continue
            start, self._first_start = self._first_start, 0
            self._packer.add(tokens, pos, start)
        return True


def to_batch(rows: torch.Tensor | np.ndarray, valid: int, epoch: int) -> Batch:
    """The batch of ``rows``, whose first ``valid`` tokens (row-major) are real: the targets of
    the padding after them are -100 (ignored by the loss)."""
    batch = Batch.from_rows(rows, epoch)
    n, row = rows.shape
    if valid < n * row:
        # Target (i, j) is token i * row + j + 1 of the rows.
        index = torch.arange(n)[:, None] * row + torch.arange(1, row)[None, :]
        batch.targets[index >= valid] = -100
    return batch
