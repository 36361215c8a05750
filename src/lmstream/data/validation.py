"""The fixed validation set, tokenized once and cached, and the batches cut from it.

Where it comes from (``documents.DataPlan.validation``):

* "split": the first ``data.validation_documents`` documents of the dataset's validation split
  (``validation_split`` in streaming_config.json);
* "files": the first ``data.validation_documents`` documents of ``data.validation_shards``;
* "holdout" (no validation split, e.g. FineWeb): the first ``data.validation_documents``
  clean documents of the training source, in source order, taken from within
  ``max_samples`` when streaming_config.json sets it (so the holdout shrinks the pass instead
  of reaching past it). Training never sees them: its workers deal out the documents after
  the first N (``documents.TextSource``, token shards alike), and text workers also drop every
  document whose content hash (``documents.document_hash``) is in the held-out set, so exact
  copies of them elsewhere in the stream do not leak. The set does not depend on world size or
  worker count, so it stays the same when a run is resumed on more GPUs.

``check_training_documents`` refuses, before any worker starts, a holdout that would leave
fewer training documents than there are data workers, in one line naming
``data.validation_documents`` and the source's size.

The tokens are cached as ``CACHE/validation/validation-KEY.npz`` (CACHE = ``data.cache_dir``,
else the run folder; KEY hashes the source, the count and the tokenizer), so every evaluation
and every resume uses identical batches and the source is read once. KEY also holds what the
source's files are now: (path, size, mtime) of local files, and for a remote source
(``remote_identity``: a Hub dataset's commit, an URL's ETag or Last-Modified) a second part,
``validation-KEY-REMOTE.npz``: a source that changed behind the same name or a moving revision
is read again instead of validating on documents that are no longer its first N (and that may
now be trained on). When the remote identity cannot be had (offline, a server that refuses),
the run goes on with the newest entry of the same KEY and says so in one line; with none, the
source is read and kept as ``validation-KEY-unchecked.npz``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lmstream.config import TrainingConfig
from lmstream.data.content_record import local_files
from lmstream.data.documents import DataPlan, TextSource, document_hash, resolve_plan
from lmstream.data.packing import Batch, encode_documents, eot_id
from lmstream.data.remote_identity import RemoteIdentity, remote_identity
from lmstream.data.token_shards import TokenShards, tokenizer_fingerprint
from lmstream.errors import ConfigError, DataSourceError

_ENCODE_BATCH = 1000
HOLDOUT_FRACTION = 0.05  # of --max-samples, for the holdout orchestrate writes into training.yaml
HOLDOUT_MAX = 1000  # data.validation_documents' default: plenty for a stable validation loss
HOLDOUT_MIN = 8

log = logging.getLogger(__name__)
# Entries this process built or already said it uses unchecked: a set is loaded more than once
# per start-up (loader, evaluation), and one just built from the source needs no warning.
_KNOWN_ENTRIES: set[Path] = set()


def holdout_size(max_samples: int | None) -> int:
    """``data.validation_documents`` for a source of ``max_samples`` documents (None: endless):
    5% of them, at least a few and at most 1,000, always leaving most of them to train on (a
    fixed 1,000 would swallow a small first run's 800 documents, issue #18)."""
    if max_samples is None:
        return HOLDOUT_MAX
    size = max(HOLDOUT_MIN, round(HOLDOUT_FRACTION * max_samples))
    return min(size, HOLDOUT_MAX, max_samples // 4)


@dataclass(frozen=True)
class ValidationSet:
    """Flat validation tokens (documents each followed by eot) and what training must skip."""

    tokens: np.ndarray
    hashes: frozenset[bytes] = frozenset()  # text holdout: content hashes training skips
    skip_first: int = 0  # holdout: the first documents of the source, which training skips


def _cache_path(cfg: TrainingConfig, run_dir: Path, plan: DataPlan, tokenizer: Any) -> Path:
    """Where this plan's validation set is cached (an existing file there is used as it is)."""
    ident = {
        "plan": plan.identity,
        "validation": plan.validation,
        "documents": cfg.data.validation_documents,
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "content": local_files(plan),
    }
    key = _digest(ident)
    folder = Path(cfg.data.cache_dir or run_dir) / "validation"
    remote = remote_identity(spec for spec in (plan.spec, plan.validation_spec) if spec)
    if not remote.sources:
        return folder / f"validation-{key}.npz"
    if remote.unknown is None:
        return folder / f"validation-{key}-{_digest(remote.parts)}.npz"
    return _unchecked_entry(folder, key, remote)


def _unchecked_entry(folder: Path, key: str, remote: RemoteIdentity) -> Path:
    """The entry to use when a remote source's content cannot be checked: the newest of the
    same key, said in one line since the source may have changed since (a run must not stop
    for it: offline, the cache may be the only copy), else a new entry marked unchecked."""
    entries = [p for p in folder.glob(f"validation-{key}-*.npz") if p.is_file()]
    if not entries:
        return folder / f"validation-{key}-unchecked.npz"
    newest = max(entries, key=lambda p: p.stat().st_mtime_ns)
    source, reason = remote.unknown or ("", "")
    line = (
        f"validation: could not check whether {source} changed since the cached validation "
        f"set ({reason}); using the cache {newest.name}"
    )
    if newest not in _KNOWN_ENTRIES and os.environ.get("RANK", "0") == "0":  # not once per rank
        log.warning("%s", line)
    _KNOWN_ENTRIES.add(newest)
    return newest


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


def load_validation_set(
    cfg: TrainingConfig, tokenizer: Any, run_dir: Path, plan: DataPlan | None = None
) -> ValidationSet:
    """The cached validation set, built on first use (safe to call from every rank at once)."""
    if cfg.data.validation_documents == 0:
        return ValidationSet(np.empty(0, dtype=np.uint32))
    plan = plan or resolve_plan(cfg, run_dir)
    path = _cache_path(cfg, Path(run_dir), plan, tokenizer)
    if path.is_file():
        with np.load(path) as f:
            hashes = frozenset(row.tobytes() for row in f["hashes"])
            return ValidationSet(f["tokens"], hashes, int(f["skip_first"]))
    docs, hashes, skip_first = _read_documents(plan, cfg.data.validation_documents)
    if docs and isinstance(docs[0], str):
        docs = [
            t for i in range(0, len(docs), _ENCODE_BATCH)
            for t in encode_documents(tokenizer, docs[i : i + _ENCODE_BATCH])
        ]  # fmt: skip
    eot = np.array([eot_id(tokenizer)])
    flat = np.concatenate([part for doc in docs for part in (doc, eot)]).astype(np.uint32)
    hash_rows = np.frombuffer(b"".join(sorted(hashes)), dtype=np.uint8).reshape(-1, 8)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Each rank writes its own temporary file and renames it: identical contents, atomic.
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
    np.savez(tmp, tokens=flat, hashes=hash_rows, skip_first=np.int64(skip_first))
    os.replace(tmp, path)
    _KNOWN_ENTRIES.add(path)
    return ValidationSet(flat, frozenset(hashes), skip_first)


def _read_documents(plan: DataPlan, n: int) -> tuple[list, set[bytes], int]:
    """(the validation documents: texts or token arrays, held-out hashes, held-out shard docs)."""
    holdout = plan.validation == "holdout"
    if plan.kind == "tokens":
        shards = TokenShards(plan.token_paths if holdout else plan.validation_token_paths)
        if holdout and n >= len(shards):
            raise ConfigError(
                f"data.validation_documents: {n} would hold out all {len(shards)} documents "
                "of data.train_shards; lower it or set data.validation_shards"
            )
        count = min(n, len(shards))
        return [shards.document(i) for i in range(count)], set(), count if holdout else 0
    if holdout:
        source = TextSource(plan.spec, plan.split, max_samples=plan.max_samples)
    else:
        source = TextSource(plan.validation_spec, plan.validation_split)
    source.open(0, None)
    texts = source.read(n)
    if not texts:
        raise DataSourceError("the validation source holds no documents")
    if not holdout:
        return texts, set(), 0
    return texts, {document_hash(t) for t in texts}, len(texts)


def check_training_documents(
    plan: DataPlan, held_out: ValidationSet, workers: int, asked: int
) -> None:
    """ConfigError, before training starts, when fewer documents than ``workers`` (ranks x
    data.num_workers) are left to train on once the holdout is taken: a worker would get none."""
    skip = held_out.skip_first
    if plan.kind == "tokens":
        size = len(TokenShards(plan.token_paths))
        left = size - skip
    else:  # read at most skip + workers documents, only as far as the answer needs
        source = TextSource(plan.spec, plan.split, max_samples=plan.max_samples)
        source.open(0, None)
        size = len(source.read(skip + workers))
        left = size - skip
    if left >= workers:
        return
    where = f" (max_samples {plan.max_samples})" if plan.max_samples else ""
    if skip:
        raise ConfigError(
            f"data.validation_documents: {asked} holds out {skip} of the source's {size} documents"
            f"{where} leaves {max(left, 0)} to train on, fewer than the {workers} data workers "
            "(ranks x data.num_workers); lower data.validation_documents (orchestrate sizes it "
            "from --max-samples) or data.num_workers, or use more data"
        )
    raise ConfigError(
        f"data.num_workers: the source has {size} documents{where}, fewer than the {workers} "
        "data workers (ranks x data.num_workers); lower data.num_workers or use more data"
    )


def build_validation_batches(
    cfg: TrainingConfig, tokenizer: Any, run_dir: Path, *, rank: int = 0, world_size: int = 1
) -> list[Batch]:
    """This rank's part of the validation set: the same rows at every evaluation, never trained on.

    The set is the first ``evaluation.num_sequences`` rows of ``sequence_length + 1`` tokens cut
    from the cached tokens: it depends on neither ``data.batch_size``, the world size nor the
    evaluation batch size, so val_loss is comparable across runs that differ only in those.
    Rows are dealt to ranks round-robin and cut into batches of ``evaluation.batch_size``. A rank
    left one row short gets a padding row whose targets are all ignored (-100): every rank runs
    the same number of forward passes (FSDP gathers parameters in each), and the padding adds
    no tokens to the token-weighted loss. [] when ``data.validation_documents`` is 0.

    A mixture has one such set per source (``evaluation.num_sequences`` rows each), its batches
    tagged with the source's name (``mixture.SourceBatch``) for ``val_loss/NAME``.
    """
    if cfg.data.validation_documents == 0:
        return []
    from lmstream.data.mixture import SourceBatch
    from lmstream.data.mixture_plan import resolve_sources, tagged

    sources = resolve_sources(cfg, Path(run_dir))
    if len(sources) == 1:
        tokens = load_validation_set(cfg, tokenizer, Path(run_dir), sources[0].plan).tokens
        return _rank_batches(cfg, tokens, rank, world_size)
    out: list[Batch] = []
    for source in sources:
        try:
            tokens = load_validation_set(cfg, tokenizer, Path(run_dir), source.plan).tokens
            batches = _rank_batches(cfg, tokens, rank, world_size)
        except (ConfigError, DataSourceError) as err:
            raise tagged(err, source.name) from None
        out += [SourceBatch(b.inputs, b.targets, source=source.name) for b in batches]
    return out


def _rank_batches(cfg: TrainingConfig, tokens: np.ndarray, rank: int, world_size: int) -> list:
    ev = cfg.runtime.evaluation
    row, bsz = cfg.data.sequence_length + 1, ev.batch_size
    n_rows = min(len(tokens) // row, ev.num_sequences)
    if n_rows == 0:
        raise DataSourceError(
            f"the validation set has {len(tokens)} tokens, fewer than one row of {row}; raise "
            f"data.validation_documents (now {cfg.data.validation_documents})"
        )
    rows = tokens[: n_rows * row].reshape(n_rows, row)[rank::world_size].astype(np.int64)
    inputs, targets = np.ascontiguousarray(rows[:, :-1]), np.ascontiguousarray(rows[:, 1:])
    short = -(-n_rows // world_size) - len(rows)  # ceil(n / world) rows on every rank
    if short:
        inputs = np.concatenate([inputs, np.zeros((short, row - 1), dtype=np.int64)])
        targets = np.concatenate([targets, np.full((short, row - 1), -100, dtype=np.int64)])
    return [
        Batch(torch.from_numpy(inputs[i : i + bsz]), torch.from_numpy(targets[i : i + bsz]))
        for i in range(0, len(inputs), bsz)
    ]
