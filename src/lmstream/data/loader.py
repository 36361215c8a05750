"""The training loader: worker parts, epochs, window shuffle, packing, exact resume.

``build_train_loader`` returns a :class:`TrainLoader`, an endless iterable of :class:`Batch`
(``inputs``/``targets`` of shape (batch_size, sequence_length), ``epoch``, ``weight``). Each
DataLoader worker of each rank is one *global worker* ``rank * num_workers + worker_id`` of
``world_size * num_workers`` and reads its own part of the source (``documents.TextSource``:
clean documents dealt round-robin, so parts differ by at most one document whatever the file
sizes; token shards likewise), window-shuffles it (``shuffle.py``), tokenizes it with
``encode_batch`` and packs it (``packing.py``). A worker's whole state is a small position: the
window's source state, the index in the window's order, the offset into the document holding
the next token, and whether its part of the pass is used up. torchdata's ``StatefulDataLoader``
gathers the workers' states, with which worker comes next, so ``state_dict()`` /
``load_state_dict()`` resume the batch sequence token for token. A resume must use the same
world size, ``data.num_workers``, ``data.shuffle_buffer_size`` and seed (refused otherwise: the
stream is split by global worker); batch size and sequence length may change, since positions
are in documents and tokens.

**An epoch is one pass over the whole source** (issue #20): every document of the pass once,
for any worker and rank count. Parts end at different batches (documents differ in length),
so nothing may start epoch e + 1 while any part of epoch e is unread:

* a worker whose part ends emits its last tokens as a final batch (rows padded with
  ``<|endoftext|>``, padded targets -100, which the loss ignores) and stops; the DataLoader
  keeps taking batches from the other workers until all have stopped: the rank's pass is over;
* with ``sync_passes`` (what training uses), the rank then yields *idle* batches (weight 0)
  until :meth:`TrainLoader.end_pass` is called. The training loop calls it at the first step
  in which every rank's micro-batches are idle, i.e. when the whole pass is consumed, so ranks
  agree on the boundary and step together meanwhile (an idle rank's zero-weight step keeps the
  gradient all-reduce in lockstep). Without ``sync_passes`` (one process reading batches) the
  next pass starts at once.

Each pass starts fresh DataLoader workers (their part's position is ``epoch``, window 0); the
loader's torch generator is seeded from ``runtime.seed`` so that starting them draws nothing
from the global RNG, which dropout uses.
"""

from __future__ import annotations

import functools
import itertools
import os
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from lmstream.config import TrainingConfig
from lmstream.data.mixture import MixBatch, MixedDataset, MixSettings
from lmstream.data.mixture_plan import (
    SourcePlan,
    check_mixture_state,
    probe_sources,
    resolve_sources,
    tagged,
)
from lmstream.data.packing import Batch, check_vocab, eot_id
from lmstream.data.token_shards import TokenShards
from lmstream.data.validation import (
    build_validation_batches,
    check_training_documents,
    load_validation_set,
)
from lmstream.data.worker import PackedDataset, StreamSettings, to_batch
from lmstream.data.worker_processes import CPU_WORKER_NICE, init_worker, stop_workers
from lmstream.errors import CheckpointError, ConfigError, DataSourceError, LmstreamError
from lmstream.failures import loader_failure

__all__ = [
    "Batch",
    "TrainLoader",
    "build_train_loader",
    "build_validation_batches",
    "check_vocab",
]

STATE_VERSION = 4  # 2: per-pass epochs (epoch, drained, worker "done"); 3: mixtures;
# 4: a mixture's epochs are passes over its primary source for every worker (workers' carry).
# Versions whose one-source states read the same (3 and 4 changed only the mixtures' states).
_READS = (2, 3, 4)
_MIXTURE_READS = (4,)  # a version-3 mixture ran its epochs per worker: another data order

# The settings that decide which documents a pass holds and where the holdout ends (keys of
# ``DataPlan.identity``): a saved position means nothing once one of them changes. How the
# source is read (stream_batch_size, retries) may change.
SOURCE_KEYS = (
    "mode", "dataset", "subset", "revision", "data_files", "split", "text_field",
    "validation_split", "max_samples", "max_chars", "train",
)  # fmt: skip


def _as_sent(item: Any) -> Any:
    return item


class TrainLoader:
    """Endless iterable of :class:`Batch`, pass after pass, with exact ``state_dict``.

    ``sync_passes``: after this rank's part of a pass, yield idle batches until
    :meth:`end_pass` (the training loop's way to make all ranks change epoch together)."""

    def __init__(
        self,
        dataset: PackedDataset | MixedDataset,
        *,
        num_workers: int,
        pin_memory: bool = False,
        sync_passes: bool = False,
        worker_nice: int = 0,
    ):
        from torchdata.stateful_dataloader import StatefulDataLoader

        self.dataset = dataset
        self.mix: MixSettings | None = getattr(dataset, "mix", None)  # a mixture's sources
        self.source_epochs: list[int] = []  # a mixture's epoch per source, as far as yielded
        # A mixture's workers' states at the end of their last part (global worker -> state):
        # where each continues its other sources at the next pass (see mixture.py).
        self._carry: dict[int, dict] = {}
        self.num_workers = num_workers
        self.sync_passes = sync_passes
        self.epoch = 0  # the pass being read
        self._drained = False  # this rank's part of the pass is used up
        self._advance = False
        if num_workers:
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        init = functools.partial(init_worker, worker_nice) if num_workers else None
        with warnings.catch_warnings():
            # torchdata 0.11's constructor calls the deprecated torch.set_vital; not ours to fix.
            warnings.filterwarnings("ignore", message=".*set_vital.*")
            self._loader = StatefulDataLoader(
                dataset,
                batch_size=None,
                num_workers=num_workers,
                worker_init_fn=init,
                # Items cross from the workers as they are: the rows as a numpy array, pickled
                # through the queue (~6 KB at nanoGPT's shape). The default conversion to a tensor
                # sent each batch through a shared-memory file and a socket handshake for its
                # descriptor, 0.6 CPU-ms per batch on both sides together.
                collate_fn=_as_sent,
                pin_memory=pin_memory,
                generator=torch.Generator().manual_seed(dataset.settings.seed),
            )
        self._skipped: dict[int, dict] = {}
        self.last_worker = -1  # global worker of the last batch (-1: idle), for traces
        self._live: Any = None  # the open DataLoader iterator, for close()

    def close(self) -> None:
        """Stop the worker processes now (they ignore SIGTERM/SIGINT: the rank ends them)."""
        live, self._live = self._live, None
        if live is not None:
            stop_workers(live)
        # state_dict() on a loader not yet iterated makes torchdata build (and keep) an iterator
        # with running workers that no pass of ours holds: stop those as well.
        built = getattr(self._loader, "_iterator", None)
        if built is not None and built is not live:
            stop_workers(built)

    @property
    def skipped(self) -> Counter:
        """Bad records skipped so far, by reason, summed over this rank's workers."""
        total: Counter = Counter()
        for counts in self._skipped.values():
            total.update(counts)
        return total

    def end_pass(self) -> None:
        """Every rank has used up its part of the pass: start the next one."""
        self._advance = True

    def __iter__(self):
        while True:
            if not self._drained:
                self.dataset.epoch = self.epoch
                if self.mix is not None:
                    self.dataset.carry = dict(self._carry)
                self.dataset.prepare(self.epoch)
                yield from self._one_pass()
                self._drained = True
            if self.sync_passes and not self._advance:
                idle, self.last_worker = self._idle_batch(), -1
                while not self._advance:
                    yield idle
            self._advance, self._drained = False, False
            self.epoch += 1

    def _one_pass(self):
        it = self._live = iter(self._loader)
        try:
            while True:
                try:
                    rows, valid, epoch, worker, skipped, *mixed = next(it)
                except StopIteration:
                    return
                except (LmstreamError, RuntimeError, ConnectionError, EOFError) as err:
                    error = loader_failure(err, self.num_workers)
                    if error is None:
                        raise
                    raise error from (None if isinstance(err, LmstreamError) else err)
                self._skipped[worker] = skipped
                self.last_worker = worker
                batch = to_batch(rows, valid, epoch)
                if mixed:  # a mixture's batch: its tokens and epochs per source
                    batch = self._mixed(batch, mixed[0])
                yield batch
        finally:
            stop_workers(it)

    def _mixed(self, batch: Batch, extra: dict) -> MixBatch:
        if "end" in extra:  # the worker's part of the pass ended with this batch
            self._carry[extra["end"]["worker"]] = extra["end"]
        epochs = extra["epochs"]
        self.source_epochs = [max(a, b) for a, b in itertools.zip_longest(
            self.source_epochs, epochs, fillvalue=0)]  # fmt: skip
        return MixBatch(batch.inputs, batch.targets, batch.epoch, batch.weight,
                        tuple(extra["tokens"]), tuple(epochs))  # fmt: skip

    def _idle_batch(self) -> Batch:
        s = self.dataset.settings
        rows = torch.full((s.batch_size, s.sequence_length + 1), s.eot_id, dtype=torch.long)
        return Batch(rows[:, :-1], rows[:, 1:], self.epoch, weight=0.0)

    def _meta(self) -> dict:
        s = self.dataset.settings
        return {
            "version": STATE_VERSION,
            "world_size": s.world_size,
            "num_workers": self.num_workers,
            "shuffle_buffer_size": s.window_size,
            "seed": s.seed,
        }

    def state_dict(self) -> dict:
        # A used-up pass needs no position: the next one starts fresh (and once end_pass was
        # called, the state is that of the next pass, not yet begun).
        drained, epoch = self._drained, self.epoch
        if drained and self._advance:
            drained, epoch = False, epoch + 1
        return {
            **self._meta(),
            "source": self._source(),
            "rank": self.dataset.settings.rank,
            "skipped": dict(self._skipped),
            "epoch": epoch,
            "drained": drained,
            "loader": None if self._drained else self._loader.state_dict(),
            **({"carry": dict(self._carry)} if self.mix is not None else {}),
        }

    def load_state_dict(self, state: dict) -> None:
        version = state.get("version")
        if version not in _READS:
            which = "an older" if (version or 0) < STATE_VERSION else "a newer"
            raise CheckpointError(
                f"the checkpoint's data state (version {version}) was written by {which} "
                f"lmstream whose data order differs (this one reads versions {_READS}: an "
                "epoch is a whole pass since issue #20); it cannot resume exactly: finish that run "
                "with the lmstream that wrote it, or start a new run without --resume"
            )
        if (
            self.mix is not None
            and version not in _MIXTURE_READS
            and "sources" in (state.get("source") or {})
        ):
            raise CheckpointError(
                f"the checkpoint's data state (version {version}) is a mixture's whose epochs "
                "ended per data worker (this lmstream ends them when every worker has finished "
                "its part of the primary source); it cannot resume exactly: finish that run "
                "with the lmstream that wrote it, or start a new run without --resume"
            )
        meta = {k: v for k, v in self._meta().items() if k != "version"}  # checked above
        saved = {k: state.get(k) for k in meta}
        if saved != meta:
            diff = ", ".join(f"{k} {saved[k]} -> {v}" for k, v in meta.items() if saved[k] != v)
            raise CheckpointError(
                f"the data state cannot resume exactly with changed settings ({diff}); resume "
                "with the same number of ranks, data.num_workers, data.shuffle_buffer_size and "
                "runtime.seed"
            )
        self._check_source(state.get("source"))
        self._skipped = {int(k): dict(v) for k, v in state.get("skipped", {}).items()}
        self._carry = {int(k): v for k, v in state.get("carry", {}).items()}
        self.epoch, self._drained = int(state["epoch"]), bool(state["drained"])
        self._advance = False
        if state["loader"] is not None:
            self._loader.load_state_dict(state["loader"])

    def _source(self) -> dict:
        if self.mix is not None:  # a mixture: each source's keys, by name
            return {"sources": {
                name: {k: st.plan.identity[k] for k in SOURCE_KEYS if k in st.plan.identity}
                for name, st in zip(self.mix.names, self.mix.settings, strict=True)
            }}  # fmt: skip
        identity = self.dataset.settings.plan.identity
        return {k: identity[k] for k in SOURCE_KEYS if k in identity}

    def _check_source(self, saved: dict | None) -> None:
        """Refuse a resume whose source settings changed (e.g. orchestrate re-run with another
        --max-chars or --max-samples): the saved positions would point at other documents and
        the holdout could move into training. A state saved without them is not checked.

        A mixture may change its weights and add or remove sources (each kept source continues
        from its position, see ``mixture.py``); a kept source's own settings may not change."""
        current = self._source()
        if saved is None or saved == current:
            return
        if self.mix is not None or "sources" in saved:
            # A one-source state resumed into a mixture: the name of the source it read.
            self.dataset.legacy_name = check_mixture_state(saved, current, SOURCE_KEYS)
            return
        diff = "; ".join(
            f"{k}: {saved.get(k)!r} -> {current.get(k)!r}"
            for k in SOURCE_KEYS
            if saved.get(k) != current.get(k)
        )
        raise CheckpointError(
            f"the training source changed since the checkpoint ({diff}); its data position "
            "would point at other documents: restore streaming_config.json / data.train_shards, "
            "or start a new run without --resume"
        )


def build_train_loader(
    cfg: TrainingConfig,
    tokenizer: Any,
    run_dir: Path,
    *,
    rank: int = 0,
    world_size: int = 1,
    sync_passes: bool = False,
) -> TrainLoader:
    """The rank's training loader (streaming mode when RUN_DIR/streaming_config.json exists;
    a mixture when it or data.mixture lists several sources)."""
    check_vocab(tokenizer, cfg.model.vocab_size)
    sources = resolve_sources(cfg, Path(run_dir))
    probe_sources(sources)  # a mixture's empty or unreadable source, before anything is written
    settings = [
        _settings(cfg, tokenizer, Path(run_dir), src, rank, world_size, len(sources) > 1)
        for src in sources
    ]
    if len(sources) == 1:
        dataset = PackedDataset(settings[0], tokenizer)
    else:
        mix = MixSettings(
            tuple(s.name for s in sources), tuple(s.weight for s in sources), tuple(settings)
        )
        dataset = MixedDataset(mix, tokenizer)
    return TrainLoader(
        dataset,
        num_workers=cfg.data.num_workers,
        pin_memory=torch.cuda.is_available(),
        sync_passes=sync_passes,
        worker_nice=CPU_WORKER_NICE if _trains_on_cpu(cfg) else 0,
    )


def _trains_on_cpu(cfg: TrainingConfig) -> bool:
    device = cfg.runtime.device
    return device == "cpu" or (device == "auto" and not torch.cuda.is_available())


def _settings(
    cfg: TrainingConfig, tokenizer: Any, run_dir: Path, source: SourcePlan,
    rank: int, world_size: int, named: bool,
) -> StreamSettings:  # fmt: skip
    """One source's stream settings, after its validation set and the check that it has a
    document for every data worker (errors name the source in a mixture)."""
    plan, d = source.plan, cfg.data
    try:
        held_out = load_validation_set(cfg, tokenizer, run_dir, plan)
        if plan.kind == "tokens":
            TokenShards(plan.token_paths).check_tokenizer(tokenizer)
        if source.weight > 0:  # a source of weight 0 is never drawn: it only validates
            check_training_documents(
                plan, held_out, world_size * max(d.num_workers, 1), d.validation_documents
            )
    except (ConfigError, DataSourceError) as err:
        if not named:
            raise
        raise tagged(err, source.name) from None
    return StreamSettings(
        plan=plan,
        batch_size=d.batch_size,
        sequence_length=d.sequence_length,
        window_size=d.shuffle_buffer_size,
        seed=cfg.runtime.seed,
        rank=rank,
        world_size=world_size,
        eot_id=eot_id(tokenizer),
        exclude=held_out.hashes,
        skip_first=held_out.skip_first,
    )
