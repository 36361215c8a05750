"""Open a text stream (hub dataset, local files, http(s) URL) and read clean documents from it.

Everything goes through ``datasets.load_dataset(..., streaming=True)`` so that hub ids, local
files and URLs share one code path, one position format (``IterableDataset.state_dict``) and
bounded memory. Three things the library does not do are added here:

* **Bad records never end a run.** JSON-lines and text files are read as raw byte lines by a
  sharded ``IterableDataset.from_generator`` (one shard per file, the library's own state_dict)
  and parsed here per record, because the library's JSON reader rejects a whole file for one
  malformed line or one invalid byte (and its text reader cannot re-open a remote file with a
  non-default encoding after a dropped connection). Records missing
  the field, not strings, empty, invalid UTF-8 or huge are skipped and counted by reason.
* **Transient read errors are retried** with exponential backoff and jitter, resuming at the
  batch where the error happened. datasets' own fixed 5-60 s read retries are turned off for
  remote files so that there is one retry layer with one policy.
* **Exact positions.** ``DocumentStream.state_dict()`` is the library's state at the start of the
  current batch plus the number of records consumed from it, so a resume re-reads at most one
  batch and never loses or repeats a document (datasets' state taken inside a batch from
  ``.iter(batch_size)`` only has batch granularity, and states from ``.iter`` and per-example
  iteration are not interchangeable, so the batch size is part of the state).
"""

from __future__ import annotations

import asyncio
import glob
import json
import os
import random
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets

from lmstream.errors import ConfigError, DataSourceError

DEFAULT_MAX_CHARS = 1_000_000
DEFAULT_BATCH_SIZE = 1000
BAD_KEY = "_lmstream_bad"  # reason a raw line could not become a record (jsonl/txt only)
_FILE_ATTR = "_lmstream_file"  # set on a read error: the file being read when it happened
_COMPRESSION = (".gz", ".zst", ".bz2", ".xz")
# Network settings for flaky links, read from the environment when a source or retry policy is
# made (like huggingface_hub's HF_HUB_DOWNLOAD_TIMEOUT): seconds without data before a read is
# retried, retries before a read error ends the run, and the backoff's first and largest delay.
READ_TIMEOUT_ENV = "LMSTREAM_SOURCE_READ_TIMEOUT"
MAX_RETRIES_ENV = "LMSTREAM_SOURCE_MAX_RETRIES"
RETRY_DELAY_ENV = "LMSTREAM_SOURCE_RETRY_DELAY"
MAX_RETRY_DELAY_ENV = "LMSTREAM_SOURCE_MAX_RETRY_DELAY"


def _env_number(name: str, default: float, cast: type = float) -> float:
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        value = cast(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise ConfigError(f"{name}: {raw!r} is not a non-negative {cast.__name__}")
    return value


_BUILDERS = {  # file suffix -> (datasets builder, read as raw lines and parse here)
    ".jsonl": ("text", "jsonl"),
    ".ndjson": ("text", "jsonl"),
    ".txt": ("text", "txt"),
    ".text": ("text", "txt"),
    ".json": ("json", None),
    ".parquet": ("parquet", None),
    ".csv": ("csv", None),
}


# ------------------------------------------------------------------------------------ spec


@dataclass(frozen=True)
class SourceSpec:
    """What to stream: a hub id, local file/glob/folder or URL, or explicit data files."""

    path: str
    subset: str | None = None
    data_files: tuple[str, ...] | None = None
    text_field: str = "text"
    revision: str | None = None
    trust_remote_code: bool = False
    cache_dir: str | None = None
    batch_size: int = DEFAULT_BATCH_SIZE  # records per read from the source (stream_batch_size)
    read_timeout: float = field(default_factory=lambda: _env_number(READ_TIMEOUT_ENV, 60.0))

    @classmethod
    def from_streaming_config(cls, cfg: Any, cache_dir: str | Path | None = None) -> SourceSpec:
        return cls(
            path=cfg.dataset,
            subset=cfg.subset,
            data_files=tuple(cfg.data_files) if cfg.data_files else None,
            text_field=cfg.text_field,
            revision=cfg.revision,
            trust_remote_code=cfg.trust_remote_code,
            cache_dir=str(cache_dir) if cache_dir else None,
            batch_size=cfg.stream_batch_size,
        )

    @classmethod
    def from_files(
        cls, globs: list[str], text_field: str = "text", cache_dir: str | Path | None = None
    ) -> SourceSpec:
        if not globs:
            raise DataSourceError("no data files given; pass local files, globs or URLs")
        return cls(
            path=globs[0],
            data_files=tuple(str(g) for g in globs),
            text_field=text_field,
            cache_dir=str(cache_dir) if cache_dir else None,
        )

    @property
    def is_files(self) -> bool:
        """True for local files and URLs, False for a hub dataset id."""
        return bool(self.data_files) or _is_url(self.path) or _looks_local(self.path)


def _is_url(path: str) -> bool:
    return path.startswith(("http://", "https://"))


def _looks_local(path: str) -> bool:
    p = Path(path).expanduser()
    if p.exists() or glob.has_magic(path) or path.startswith((".", "/", "~")):
        return True
    return _suffix(path) in _BUILDERS


def _suffix(path: str) -> str:
    name = path.split("?", 1)[0].lower()
    for comp in _COMPRESSION:
        name = name.removesuffix(comp)
    return Path(name).suffix


# ------------------------------------------------------------------------------ open_dataset


def _expand_local(pattern: str) -> list[str]:
    """Files for one local path, folder (recursive) or glob; URLs are kept as they are."""
    if _is_url(pattern):
        return [pattern]
    p = Path(pattern).expanduser()
    if p.is_dir():
        found = sorted(str(f) for f in p.rglob("*") if f.is_file() and _suffix(f.name) in _BUILDERS)
        if not found:
            raise DataSourceError(
                f"{pattern}: folder holds no jsonl/json/parquet/txt/csv files (optionally .gz/.zst)"
            )
        return found
    if glob.has_magic(str(p)):
        found = sorted(f for f in glob.glob(str(p), recursive=True) if Path(f).is_file())
        if not found:
            raise DataSourceError(f"{pattern}: no files match this pattern")
        return found
    if not p.is_file():
        raise DataSourceError(f"{pattern}: file not found; check the path (or the dataset id)")
    return [str(p.absolute())]


def _split_files(spec: SourceSpec) -> dict[str, list[str]]:
    """{split: files}; ``NAME=glob`` entries name their split, others are 'train'."""
    out: dict[str, list[str]] = {}
    for entry in spec.data_files or (spec.path,):
        split, sep, pattern = entry.partition("=")
        if not sep or "/" in split or not split.isidentifier():
            split, pattern = "train", entry
        out.setdefault(split, []).extend(_expand_local(pattern))
    return out


def _builder_for(files: dict[str, list[str]]) -> tuple[str, str | None]:
    kinds = {_suffix(f) for fs in files.values() for f in fs}
    unknown = sorted(k or "(no suffix)" for k in kinds if k not in _BUILDERS)
    if unknown:
        raise DataSourceError(
            f"unsupported file type {', '.join(unknown)}; use jsonl, json, parquet, txt or csv "
            "(optionally .gz/.zst)"
        )
    builders = {_BUILDERS[k] for k in kinds}
    if len(builders) > 1:
        raise DataSourceError(f"mixed file types {sorted(kinds)}; use one format per source")
    return builders.pop()


def _http_options(spec: SourceSpec) -> dict:
    import aiohttp

    timeout = aiohttp.ClientTimeout(
        total=None, sock_connect=spec.read_timeout, sock_read=spec.read_timeout
    )
    return {"client_kwargs": {"timeout": timeout}}


def _disable_library_retries() -> None:
    # datasets retries remote reads itself with fixed sleeps of 5, 20 and 60 s (up to 20 times);
    # DocumentStream's backoff replaces them, so each error surfaces at once.
    cfg = datasets.config
    cfg.STREAMING_READ_MAX_RETRIES = 1
    cfg.STREAMING_OPEN_MAX_RETRIES = 1
    for name in (
        "STREAMING_READ_RETRY_INTERVAL",
        "STREAMING_READ_SERVER_UNAVAILABLE_RETRY_INTERVAL",
        "STREAMING_READ_RATE_LIMIT_RETRY_INTERVAL",
        "STREAMING_OPEN_RETRY_INTERVAL",
    ):
        setattr(cfg, name, 0)


def open_dataset(
    spec: SourceSpec, split: str, *, retry: RetryPolicy | None = None
) -> datasets.IterableDataset:
    """The split of the source as a streaming ``IterableDataset`` (DataSourceError if it can't).

    Remote sources read metadata (parquet schemas) while opening, so transient errors here are
    retried with the same policy as reads.
    """
    retry = retry or RetryPolicy()
    for attempt in range(1, retry.max_retries + 2):
        try:
            return _open_once(spec, split)
        except _TransientOpenError as err:
            if attempt > retry.max_retries:
                raise DataSourceError(_unreachable(err.what, err.__cause__ or err)) from None
            time.sleep(retry.delay(attempt))
    raise AssertionError("unreachable")


class _TransientOpenError(Exception):
    def __init__(self, what: str):
        super().__init__(what)
        self.what = what


def _open_once(spec: SourceSpec, split: str) -> datasets.IterableDataset:
    _disable_library_retries()
    kwargs: dict[str, Any] = {"streaming": True, "cache_dir": spec.cache_dir}
    if spec.is_files and not (spec.data_files and not _looks_local(spec.path)):
        files = _split_files(spec)
        if split not in files:
            raise DataSourceError(
                f"unknown split {split!r}; this source has: {', '.join(sorted(files))} "
                "(name split files as NAME=PATH in --data-files)"
            )
        builder, raw = _builder_for(files)
        remote = any(_is_url(f) for f in files[split])
        if raw:
            return _tag(_lines_dataset(files[split], raw, spec), spec.path, remote)
        kwargs["data_files"] = {split: files[split]}
        if remote:
            kwargs["storage_options"] = _http_options(spec)
        return _tag(_load(builder, split, spec, kwargs, remote), spec.path, remote)
    kwargs.update(name=spec.subset, revision=spec.revision)
    if spec.data_files:
        kwargs["data_files"] = list(spec.data_files)
    if spec.trust_remote_code and "trust_remote_code" in _load_params():
        kwargs["trust_remote_code"] = True
    return _tag(_load(spec.path, split, spec, kwargs, remote=True), spec.path, remote=True)


def _tag(ds: datasets.IterableDataset, what: str, remote: bool) -> datasets.IterableDataset:
    # Read by DocumentStream: the name for messages; remote sources treat I/O errors as transient.
    ds._lmstream_source = what
    ds._lmstream_remote = remote
    return ds


def _load_params() -> set[str]:
    import inspect

    return set(inspect.signature(datasets.load_dataset).parameters)


def _load(
    path: str, split: str, spec: SourceSpec, kwargs: dict, remote: bool
) -> datasets.IterableDataset:
    what = spec.path if path in ("text", "json", "parquet", "csv") else path
    try:
        return datasets.load_dataset(path, split=split, **kwargs)
    except ValueError as err:
        msg = str(err)
        if "split" in msg.lower():
            raise DataSourceError(f"{what}: unknown split {split!r}: {_first_line(msg)}") from None
        if "config" in msg.lower() or "name" in msg.lower():
            raise DataSourceError(f"{what}: {_first_line(msg)} (pick one with --subset)") from None
        raise DataSourceError(f"{what}: {_first_line(msg)}") from None
    except (ConnectionError, TimeoutError, OSError) as err:
        offline = "offline" in str(err).lower() or "OfflineMode" in repr(err)
        if remote and is_transient(err) and not offline:
            raise _TransientOpenError(what) from err
        raise DataSourceError(_unreachable(what, err)) from None
    except Exception as err:  # the hub client raises many types for "not found" / "offline"
        if type(err).__name__ in {"DatasetNotFoundError", "RepositoryNotFoundError"}:
            raise DataSourceError(
                f"{what}: dataset not found on the Hugging Face Hub (or not cached while "
                "offline); check the id, or pass local files with --data-files"
            ) from None
        if remote and is_transient(err):
            raise _TransientOpenError(what) from err
        raise


def _unreachable(what: str, err: BaseException) -> str:
    return (
        f"{what}: cannot open the source ({_first_line(str(err)) or type(err).__name__}); "
        "check the network (HF_HUB_OFFLINE/HF_DATASETS_OFFLINE), the id or the URL, "
        "or pass local files with --data-files"
    )


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0][:300] if text.strip() else ""


def _lines_dataset(files: list[str], kind: str, spec: SourceSpec) -> datasets.IterableDataset:
    """Records {text_field: value, BAD_KEY: reason or None} from raw lines, one shard per file."""
    options = _http_options(spec) if any(_is_url(f) for f in files) else {}
    return datasets.IterableDataset.from_generator(
        _read_lines,
        gen_kwargs={"files": list(files), "kind": kind, "field": spec.text_field, "opts": options},
    )


def _read_lines(files: list[str], kind: str, field: str, opts: dict) -> Iterator[dict]:
    import fsspec

    for path in files:
        try:
            with fsspec.open(path, "rb", compression="infer", **opts) as handle:
                for line in handle:
                    value, reason = _parse_line(line.rstrip(b"\r\n"), kind, field)
                    yield {field: value, BAD_KEY: reason}
        except Exception as err:
            setattr(err, _FILE_ATTR, path)  # read by failed_file: which of the files broke
            raise


def _parse_line(raw: bytes, kind: str, text_field: str) -> tuple[Any, str | None]:
    if kind == "txt":
        try:
            return raw.decode("utf-8"), None
        except UnicodeDecodeError:
            return None, "invalid_utf8"
    if not raw.strip():
        return None, "empty"
    try:
        record = json.loads(raw)  # bytes: decoded as strict UTF-8
    except UnicodeDecodeError:
        return None, "invalid_utf8"
    except ValueError:
        return None, "invalid_json"
    if not isinstance(record, dict) or record.get(text_field) is None:
        return None, "missing_field"
    return record[text_field], None


def failed_file(err: BaseException) -> str | None:
    """The file that was being read when ``err`` was raised, where it can be told.

    The raw-lines reader tags its errors with the file. datasets' own parquet, csv and json
    readers only log it ("Failed to read file ...") and re-raise, so the file is taken from the
    ``file`` local of their ``_generate_tables`` frame in the traceback.
    """
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        tagged = getattr(err, _FILE_ATTR, None)
        if isinstance(tagged, str):
            return tagged
        tb = err.__traceback__
        while tb is not None:
            frame = tb.tb_frame
            module = frame.f_globals.get("__name__", "")
            if frame.f_code.co_name == "_generate_tables" and module.startswith(
                "datasets.packaged_modules."
            ):
                file = frame.f_locals.get("file")
                if isinstance(file, str):
                    return file
            tb = tb.tb_next
        err = err.__cause__ or err.__context__
    return None


# ----------------------------------------------------------------------------------- retries


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter (AWS architecture blog, "Exponential Backoff And Jitter")."""

    max_retries: int = field(default_factory=lambda: _env_number(MAX_RETRIES_ENV, 8, int))
    initial_delay: float = field(default_factory=lambda: _env_number(RETRY_DELAY_ENV, 1.0))
    max_delay: float = field(default_factory=lambda: _env_number(MAX_RETRY_DELAY_ENV, 60.0))
    multiplier: float = 2.0
    jitter: float = 0.5  # fraction of each delay drawn at random, so ranks don't retry in lockstep

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before retry number ``attempt`` (1-based)."""
        base = min(self.max_delay, self.initial_delay * self.multiplier ** (attempt - 1))
        return base * (1.0 - self.jitter * (rng or random).random())


_TRANSIENT_STATUS = {408, 425, 429, 500, 502, 503, 504}


def is_transient(err: BaseException) -> bool:
    """Connection resets, timeouts, HTTP 408/429/5xx and truncated bodies, anywhere in the chain."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, ConnectionError | TimeoutError | asyncio.TimeoutError):
            return True
        status = getattr(err, "status", None) or getattr(
            getattr(err, "response", None), "status_code", None
        )
        if isinstance(status, int) and status in _TRANSIENT_STATUS:
            return True
        name = type(err).__name__
        if name in {
            "ClientPayloadError",
            "ServerDisconnectedError",
            "ClientConnectionError",
            "ClientOSError",
            "ServerTimeoutError",
            "FSTimeoutError",
            "ContentLengthError",
            "TransferEncodingError",
            "ChunkedEncodingError",
            "IncompleteRead",
            "RemoteProtocolError",
            "ReadTimeout",
            "ConnectTimeout",
        }:
            return True
        err = err.__cause__ or err.__context__
    return False


# ------------------------------------------------------------------------------- documents


class DocumentStream:
    """Clean document strings from a streaming dataset, with skip counts, retries and a position.

    Iterating yields documents one at a time; ``iter_batches()`` yields lists (for trainers that
    take batches). ``state_dict()`` is the position just after the last document yielded.
    """

    def __init__(
        self,
        dataset: datasets.IterableDataset,
        text_field: str,
        *,
        max_chars: int = DEFAULT_MAX_CHARS,
        retry: RetryPolicy | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        sleep: Callable[[float], None] = time.sleep,
        on_retry: Callable[[int, float, BaseException], None] | None = None,
    ):
        self.dataset = dataset
        self.text_field = text_field
        self.max_chars = max_chars
        self.retry = retry or RetryPolicy()  # made now: the environment may set it
        self.batch_size = batch_size
        self.skipped: Counter[str] = Counter()
        self.documents = 0  # documents yielded so far (restored by load_state_dict)
        self.bytes = 0  # UTF-8 bytes of those documents
        self.retries = 0  # transient errors survived
        self._sleep = sleep
        self._on_retry = on_retry
        self._source_state: dict | None = None  # datasets' state at the current batch start
        self._offset = 0  # records of the current batch consumed
        self._checked_field = False
        self._batches: Iterator[dict] | None = None

    # ---- position

    def state_dict(self) -> dict:
        return {
            "source": self._source_state,
            "offset": self._offset,
            "batch_size": self.batch_size,
            "documents": self.documents,
            "bytes": self.bytes,
            "skipped": dict(self.skipped),
        }

    def load_state_dict(self, state: dict) -> None:
        try:
            self._source_state = state["source"]
            self._offset = int(state["offset"])
            self.batch_size = int(state["batch_size"])
        except (KeyError, TypeError, ValueError) as err:
            raise DataSourceError(f"data state is not a DocumentStream state ({err})") from None
        self.documents = int(state.get("documents", 0))
        self.bytes = int(state.get("bytes", 0))
        self.skipped = Counter(state.get("skipped", {}))
        self._checked_field = self._checked_field or self.documents > 0

    # ---- iteration

    def __iter__(self) -> Iterator[str]:
        for batch in self._raw_batches():
            texts = batch.get(self.text_field)
            bad = batch.get(BAD_KEY)
            n = len(next(iter(batch.values()), []))
            while self._offset < n:
                i = self._offset
                self._offset += 1
                text = self._clean(texts[i] if texts is not None else None, bad and bad[i])
                if text is not None:
                    yield text

    def iter_batches(self, size: int | None = None) -> Iterator[list[str]]:
        """Lists of up to ``size`` documents (default: the stream batch size)."""
        size = size or self.batch_size
        out: list[str] = []
        for text in self:
            out.append(text)
            if len(out) >= size:
                yield out
                out = []
        if out:
            yield out

    def _clean(self, value: Any, bad: str | None) -> str | None:
        reason = bad or None
        if reason is None:
            if value is None:
                reason = "missing_field"
            elif isinstance(value, bytes | bytearray):
                try:
                    value = bytes(value).decode("utf-8")
                except UnicodeDecodeError:
                    reason = "invalid_utf8"
            elif not isinstance(value, str):
                reason = "not_string"
        if reason is None:
            if len(value) > self.max_chars:
                reason = "too_long"
            elif not value.strip():
                reason = "empty"
            else:
                try:
                    size = len(value.encode("utf-8"))
                except UnicodeEncodeError:  # lone surrogates, e.g. a JSON "\udc80" escape
                    reason = "invalid_utf8"
        if reason is not None:
            self.skipped[reason] += 1
            return None
        self.documents += 1
        self.bytes += size
        return value

    def _raw_batches(self) -> Iterator[dict]:
        """The source's record batches from the saved position, retrying transient errors."""
        self.dataset.load_state_dict(self._source_state)
        self._batches = batches = self.dataset.iter(batch_size=self.batch_size)
        try:
            yield from self._retrying(batches)
        finally:
            self._close()

    def _retrying(self, batches: Iterator[dict]) -> Iterator[dict]:
        attempt = 0
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                return
            except Exception as err:
                if not self._transient(err):
                    raise DataSourceError(
                        f"{self._name(err)}: read failed: {_describe(err)}"
                    ) from err
                attempt += 1
                if attempt > self.retry.max_retries:
                    raise DataSourceError(
                        f"{self._name(err)}: read failed after {self.retry.max_retries} retries: "
                        f"{_describe(err)}; check the network or the source, then resume"
                    ) from err
                wait = self.retry.delay(attempt)
                self.retries += 1
                if self._on_retry is not None:
                    self._on_retry(attempt, wait, err)
                self._sleep(wait)
                # Re-open at the start of the batch that failed: nothing of it was consumed.
                self.dataset.load_state_dict(self._source_state)
                self._batches = batches = self.dataset.iter(batch_size=self.batch_size)
                continue
            attempt = 0
            after = self.dataset.state_dict()
            self._check_field(batch)
            yield batch
            self._source_state, self._offset = after, 0

    def _close(self) -> None:
        # Close the library's generators now, not at interpreter exit (where pyarrow is gone).
        batches, self._batches = self._batches, None
        if batches is not None:
            batches.close()

    def _check_field(self, batch: dict) -> None:
        """A text field absent from every record of the first batch is a wrong --text-field."""
        if self._checked_field:
            return
        self._checked_field = True
        values = batch.get(self.text_field)
        if values is not None and any(v is not None for v in values):
            return
        if BAD_KEY in batch and any(r != "missing_field" for r in batch[BAD_KEY]):
            return
        fields = [k for k in batch if k not in (BAD_KEY, self.text_field)]
        have = f"; records have: {', '.join(fields)}" if fields else ""
        raise DataSourceError(
            f"{self._name()}: text field {self.text_field!r} not found in the first "
            f"{len(next(iter(batch.values()), []))} records{have} (choose it with --text-field)"
        )

    def _transient(self, err: BaseException) -> bool:
        # Remote reads surface a dropped connection as FileNotFoundError or a malformed-URL error
        # once datasets/fsspec have re-opened the file, losing the cause: for a source that did
        # open, any I/O error is worth a bounded number of retries.
        remote = getattr(self.dataset, "_lmstream_remote", False)
        return is_transient(err) or (
            remote and (isinstance(err, OSError) or type(err).__module__.startswith("aiohttp"))
        )

    def _name(self, err: BaseException | None = None) -> str:
        """The file that ``err`` came from if known, else the source as it was given."""
        found = failed_file(err) if err is not None else None
        return found or getattr(self.dataset, "_lmstream_source", None) or "data source"


def _describe(err: BaseException) -> str:
    return f"{type(err).__name__}: {_first_line(str(err))}"


# ---------------------------------------------------------------------------------- sharding


def shard_for(
    dataset: datasets.IterableDataset, index: int, count: int
) -> datasets.IterableDataset:
    """Disjoint part ``index`` of ``count``: whole source shards round-robin when the shard count
    divides evenly, else every ``count``-th record. The union over all indexes is every record once.
    """
    if not 0 <= index < count:
        raise ValueError(f"shard index {index} is outside 0..{count - 1}")
    if count == 1:
        return dataset
    from datasets.distributed import split_dataset_by_node

    part = split_dataset_by_node(dataset, rank=index, world_size=count)
    source = getattr(dataset, "_lmstream_source", None)
    if source:
        part._lmstream_source = source
    return part
