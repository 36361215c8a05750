"""Where the loader's documents come from: streaming or files mode, and one worker's part of it.

``resolve_plan`` turns the config into a :class:`DataPlan`: streaming mode when
``RUN_DIR/streaming_config.json`` exists (dataset, split, text field and ``max_samples`` from
it), else files mode from ``data.train_shards`` (text files read through the sources module, or
pre-tokenized token shards, see ``lmstream.data.token_shards``).

``data.cache_dir`` is where the datasets library caches what it downloads for the source, and
where the tokenized validation set is kept (else the run folder); see ``validation.py``.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from lmstream.config import (
    StreamingConfig,
    StreamSourceConfig,
    TrainingConfig,
    load_streaming_config,
)
from lmstream.data.interleave import STREAMS, InterleavedPass, count_documents, cuts_of
from lmstream.data.pinning import pinned
from lmstream.data.sources import SourceSpec, open_dataset
from lmstream.data.stream import DocumentStream
from lmstream.data.token_shards import is_token_shards
from lmstream.errors import ConfigError
from lmstream.workspace import STREAMING_CONFIG


def document_hash(text: str) -> bytes:
    """A 64-bit content hash: how training recognises the held-out validation documents."""
    return hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()


@dataclass(frozen=True)
class DataPlan:
    """What the training loader and the validation set read.

    ``kind`` is "text" (documents from ``spec``/``split``) or "tokens" (token shards at
    ``token_path``). ``validation`` is "split" (``validation_spec``/``validation_split``), "files"
    (``validation_spec`` or ``validation_token_path``) or "holdout" (the first
    ``data.validation_documents`` documents of the training source, which training skips).
    """

    kind: str
    spec: SourceSpec | None = None
    split: str = "train"
    max_samples: int | None = None
    token_paths: tuple[str, ...] = ()
    validation: str = "holdout"
    validation_spec: SourceSpec | None = None
    validation_split: str = "train"
    validation_token_paths: tuple[str, ...] = ()
    identity: dict = field(default_factory=dict)  # what the validation cache key is made of


def resolve_plan(cfg: TrainingConfig, run_dir: Path) -> DataPlan:
    """Streaming mode when RUN_DIR/streaming_config.json exists, else files mode. A mixture
    (``mixture_plan.resolve_sources`` has every source) answers with its primary source: the
    largest weight, the first on ties (what a one-line description of the data names)."""
    cache = str(cfg.data.cache_dir) if cfg.data.cache_dir else None
    sc_path = Path(run_dir) / STREAMING_CONFIG
    if cfg.data.mixture is not None or (
        sc_path.is_file() and load_streaming_config(sc_path).sources is not None
    ):
        from lmstream.data.mixture_plan import resolve_sources

        sources = resolve_sources(cfg, Path(run_dir))
        return max(sources, key=lambda s: s.weight).plan  # max keeps the first of equals
    if sc_path.is_file():
        sc = load_streaming_config(sc_path)
        ident = {"mode": "streaming", **sc.model_dump(mode="json", exclude={"experiment"})}
        return stream_plan(sc.source_list()[0], sc, cache, ident)
    train, val = list(cfg.data.train_shards), list(cfg.data.validation_shards)
    if not train:
        raise ConfigError(
            f"data.train_shards: empty and there is no {STREAMING_CONFIG} in {run_dir}; list "
            "training files or globs, or run `lmstream orchestrate --stream` to stream a dataset"
        )
    return files_plan(train, val, cache)


def stream_plan(
    source: StreamSourceConfig | StreamingConfig,
    sc: StreamingConfig,
    cache: str | None,
    identity: dict,
) -> DataPlan:
    """The plan of one streamed ``source`` of streaming_config.json ``sc`` (version 1's one
    source or a version-2 source); ``identity`` is what decides its documents (the validation
    cache key and the loader's resume check)."""
    # The run's commit of a Hub source when one is pinned (pinning.py); ``identity`` keeps the
    # revision as configured, so the resume check and the validation cache key do not move.
    spec = pinned(SourceSpec.from_source(source, sc, cache_dir=cache))
    if source.validation_split:
        return DataPlan(
            "text", spec, source.split, source.max_samples, validation="split",
            validation_spec=spec, validation_split=source.validation_split, identity=identity,
        )  # fmt: skip
    return DataPlan("text", spec, source.split, source.max_samples, identity=identity)


def files_plan(
    train: list[str], val: list[str], cache: str | None, field_prefix: str = "data."
) -> DataPlan:
    """The plan of files-mode training files ``train`` (text or token shards) and validation
    files ``val`` (empty: a holdout); ``field_prefix`` names where they were set, for errors
    (``data.`` or a mixture source's ``data.mixture[k].``)."""
    ident = {"mode": "files", "train": train, "validation": val}
    tokens = _token_mode(train, f"{field_prefix}train_shards")
    val_tokens = _token_mode(val, f"{field_prefix}validation_shards") if val else tokens
    if tokens:
        if val and not val_tokens:
            raise ConfigError(
                f"{field_prefix}validation_shards: must be token shards like "
                f"{field_prefix}train_shards"
            )
        return DataPlan(
            "tokens", token_paths=tuple(train), validation="files" if val else "holdout",
            validation_token_paths=tuple(val), identity=ident,
        )  # fmt: skip
    if val and val_tokens:
        raise ConfigError(
            f"{field_prefix}validation_shards: must be text files like {field_prefix}train_shards"
        )
    spec = SourceSpec.from_files(train, cache_dir=cache)
    if not val:
        return DataPlan("text", spec, identity=ident)
    val_spec = SourceSpec.from_files(val, cache_dir=cache)
    return DataPlan("text", spec, validation="files", validation_spec=val_spec, identity=ident)


def _token_mode(paths: list[str], name: str) -> bool:
    kinds = {is_token_shards(p) for p in paths}
    if len(kinds) > 1:
        raise ConfigError(f"{name}: mixes token shards and text files; use one kind")
    return kinds == {True}


def shuffled_reading(window_size: int, seed: int) -> dict:
    """``TextSource`` arguments for a loader shuffling with windows of ``window_size``: read in
    shuffled order, blocks of ``window_size // STREAMS`` (so a window holds documents of every
    open shard, as datasets' buffer does); none when not shuffling (source order)."""
    if window_size <= 1:
        return {}
    return {"seed": seed, "block": max(1, window_size // STREAMS)}


class TextSource:
    """One worker's part of one pass over a text source (a ``shuffle.DocumentSource``).

    The pass is the source's clean documents (bad records skipped by ``DocumentStream``'s rule,
    the same one orchestrate applies) numbered 0, 1, 2... in source order, cut at
    ``max_samples`` (a prefix: the first N clean documents, for any worker or rank count, the N
    the tokenizer was trained on). The first ``skip_first`` of them are the validation holdout;
    the rest are dealt round-robin: worker w of W takes documents ``skip_first + w``,
    ``skip_first + w + W``, ... So every document of the pass belongs to exactly one worker and
    the parts differ by at most one document, whatever the files' sizes (a split by whole
    files would give a worker of a 10-document file and one of a 290-document file).

    With ``seed`` set (the loader sets it when shuffling) the pass is read in a per-epoch
    shuffled order instead of source order (``interleave.InterleavedPass``: shards in an order
    drawn from the seed and epoch, 16 read interleaved by blocks of ``block`` documents, each
    from a seeded point from the second epoch on, which needs ``sizes``, counted if not given);
    the documents of the pass, the holdout and the deal are the same, only the sequence dealt
    changes. Every worker draws the same sequence, so the parts stay disjoint and complete.

    The price: each worker reads (not tokenizes) the whole source and keeps 1/W of it. Reading
    is about 80x cheaper than tokenizing here; for very large or remote sources, pre-tokenize
    to token shards (``token_shards.py``), whose workers seek straight to their documents.
    Documents whose content hash is in ``exclude`` (copies of held-out documents) are dropped.
    """

    def __init__(
        self,
        spec: SourceSpec,
        split: str,
        *,
        worker: int = 0,
        workers: int = 1,
        max_samples: int | None = None,
        skip_first: int = 0,
        exclude: frozenset[bytes] = frozenset(),
        seed: int | None = None,
        block: int = 1,
        sizes: list[int | None] | None = None,
    ):
        if not 0 <= worker < workers:
            raise ValueError(f"worker {worker} is outside 0..{workers - 1}")
        self.spec, self.split = spec, split
        self.worker, self.workers = worker, workers
        self.max_samples = max_samples
        self.skip_first = skip_first
        self.exclude = exclude
        self.seed, self.block = seed, block
        self.sizes = sizes  # clean documents per shard (``shard_sizes``), when known
        self._prefix: list | None = None  # the same, counted only over the holdout/max_samples
        self._pass: InterleavedPass | None = None
        self._dealt = 0  # documents of the shuffled sequence dealt so far (to all workers)
        self._stream: DocumentStream | None = None
        self._it: Iterator[str] | None = None
        self._copies = 0

    @property
    def skipped(self) -> Counter:
        # Every worker reads every record; only worker 0 reports the bad ones, so that the
        # loader's sum over workers counts each once.
        reader = self._pass if self._pass is not None else self._stream
        if reader is None or self.worker != 0:
            return Counter()
        return reader.skipped + Counter({"validation_copy": self._copies} if self._copies else {})

    def _make_stream(self, ds) -> DocumentStream:
        return DocumentStream(
            ds, self.spec.text_field, max_chars=self.spec.max_chars, batch_size=self.spec.batch_size
        )

    def open(self, epoch: int, state: dict | None) -> None:
        ds = open_dataset(self.spec, self.split)
        if self.seed is not None:
            if epoch > 0 and self.sizes is None:  # rotating shards needs their sizes
                self.sizes = self.shard_sizes(ds)
            if self.sizes is None and self._prefix is None:
                until = max(self.skip_first, self.max_samples or 0)
                self._prefix = count_documents(ds, self._make_stream, until=until)
            counts = self.sizes if self.sizes is not None else self._prefix
            cuts = cuts_of(counts, skip_first=self.skip_first, max_samples=self.max_samples)
            self._pass = InterleavedPass(
                ds, self._make_stream, counts, cuts, seed=self.seed, epoch=epoch, block=self.block
            )
            self._dealt = 0
            if state is not None:
                self._pass.load_state_dict(state["pass"])
                self._dealt = int(state["dealt"])
            self._it = iter(self._pass)
            return
        self._stream = self._make_stream(ds)
        if state is not None:
            self._stream.load_state_dict(state)
        self._it = iter(self._stream)

    def shard_sizes(self, ds=None) -> list[int | None]:
        """Clean documents per shard of the source (up to ``max_samples``): one read of it."""
        ds = ds if ds is not None else open_dataset(self.spec, self.split)
        return count_documents(ds, self._make_stream, until=self.max_samples)

    def state(self) -> dict:
        if self._pass is not None:
            return {"pass": self._pass.state_dict(), "dealt": self._dealt}
        return self._stream.state_dict()

    def read(self, n: int) -> list[str]:
        if self._pass is not None:
            return self._read_shuffled(n)
        out: list[str] = []
        stream, limit = self._stream, self.max_samples
        while len(out) < n and (limit is None or stream.documents < limit):
            text = next(self._it, None)
            if text is None:
                break
            index = stream.documents - 1 - self.skip_first  # its number after the holdout
            if index >= 0 and self._keeps(index, text):
                out.append(text)
        return out

    def _read_shuffled(self, n: int) -> list[str]:
        # The pass already holds only pass documents (holdout skipped, max_samples applied).
        out: list[str] = []
        while len(out) < n:
            text = next(self._it, None)
            if text is None:
                break
            index, self._dealt = self._dealt, self._dealt + 1
            if self._keeps(index, text):
                out.append(text)
        return out

    def _keeps(self, index: int, text: str) -> bool:
        """Whether pass document ``index`` is this worker's (the round-robin deal) and not a
        copy of a held-out document (counted when dropped)."""
        if index % self.workers != self.worker:
            return False
        if self.exclude and document_hash(text) in self.exclude:
            self._copies += 1
            return False
        return True
