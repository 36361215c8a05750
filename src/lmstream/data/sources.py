"""Open a text source (hub dataset, local files, http(s) URL) as a streaming dataset.

Everything goes through ``datasets.load_dataset(..., streaming=True)`` so that hub ids, local
files and URLs share one code path, one position format (``IterableDataset.state_dict``) and
bounded memory. JSON-lines and text files are read as raw byte lines by a sharded
``IterableDataset.from_generator`` (one shard per file, the library's own state_dict) and parsed
here per record, because the library's JSON reader rejects a whole file for one malformed line
or one invalid byte (and its text reader cannot re-open a remote file with a non-default
encoding after a dropped connection); a line that does not parse becomes a record marked bad,
which the reader skips and counts. datasets' own fixed 5-60 s read retries are turned off for
remote files so that there is one retry layer with one policy; opening a remote source retries
with that policy too.

Reading clean documents from the dataset, with retries and exact positions, is
:class:`lmstream.data.stream.DocumentStream`; it and the retry settings are re-exported here.
"""

from __future__ import annotations

import glob
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets

from lmstream.data import object_store
from lmstream.data.object_store import is_object_store
from lmstream.data.stream import (
    BAD_KEY,
    DEFAULT_BATCH_SIZE,
    DEFAULT_MAX_CHARS,
    FILE_ATTR,
    MAX_RETRIES_ENV,
    MAX_RETRY_DELAY_ENV,
    RETRY_DELAY_ENV,
    DocumentStream,
    RetryPolicy,
    env_number,
    first_line,
    is_transient,
)
from lmstream.errors import DataSourceError

__all__ = [
    "BAD_KEY",
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_MAX_CHARS",
    "MAX_RETRIES_ENV",
    "MAX_RETRY_DELAY_ENV",
    "READ_TIMEOUT_ENV",
    "RETRY_DELAY_ENV",
    "DocumentStream",
    "RetryPolicy",
    "SourceSpec",
    "is_transient",
    "open_dataset",
    "shard_for",
]

_COMPRESSION = (".gz", ".zst", ".bz2", ".xz")
# Seconds without data before a read is retried, read from the environment when a source is made
# (like huggingface_hub's HF_HUB_DOWNLOAD_TIMEOUT); the retry settings are in the stream module.
READ_TIMEOUT_ENV = "LMSTREAM_SOURCE_READ_TIMEOUT"

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
    max_chars: int = (
        DEFAULT_MAX_CHARS  # longer documents are skipped ("too_long"), as orchestrate did
    )
    read_timeout: float = field(default_factory=lambda: env_number(READ_TIMEOUT_ENV, 60.0))

    @classmethod
    def from_source(cls, source: Any, cfg: Any, cache_dir: str | Path | None = None) -> SourceSpec:
        """One streamed source (version 1's one source or a version-2 ``sources`` entry: its
        dataset, subset, files, text field, revision) with the file-wide reading settings of
        its streaming_config.json ``cfg`` (batch size, longest document, remote code)."""
        return cls(
            path=source.dataset,
            subset=source.subset,
            data_files=tuple(source.data_files) if source.data_files else None,
            text_field=source.text_field,
            revision=source.revision,
            trust_remote_code=cfg.trust_remote_code,
            cache_dir=str(cache_dir) if cache_dir else None,
            batch_size=cfg.stream_batch_size,
            max_chars=cfg.max_chars,
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
        return bool(self.data_files) or _is_remote(self.path) or _looks_local(self.path)

    @property
    def is_hub(self) -> bool:
        """True for a Hugging Face Hub dataset id (with or without data files in it), which is
        read at ``revision``."""
        return not (_is_remote(self.path) or _looks_local(self.path))


def _is_url(path: str) -> bool:
    return path.startswith(("http://", "https://"))


def _is_remote(path: str) -> bool:
    """Files read over the network: http(s) URLs and object storage (s3://, gs://, hf://)."""
    return _is_url(path) or is_object_store(path)


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


def is_data_file(name: str) -> bool:
    """Whether a folder's file ``name`` is data the loader reads (jsonl, json, parquet, txt,
    csv, optionally compressed): a folder source reads those and skips the rest (a clone's
    .git, a README)."""
    return _suffix(name) in _BUILDERS


# ------------------------------------------------------------------------------ open_dataset


def _expand_local(pattern: str) -> list[str]:
    """Files for one local path, folder (recursive) or glob; URLs are kept as they are."""
    if _is_url(pattern):
        return [pattern]
    if is_object_store(pattern):
        return object_store.expand(pattern, is_data_file, _listing_transient)
    p = Path(pattern).expanduser()
    if p.is_dir():
        found = sorted(str(f) for f in p.rglob("*") if f.is_file() and is_data_file(f.name))
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


def split_entry(entry: str) -> tuple[str, str]:
    """(split, pattern) of a data-files entry: ``NAME=glob`` names its split, others are
    'train' (an ``=`` inside a path or URL does not name one)."""
    split, sep, pattern = entry.partition("=")
    if not sep or "/" in split or not split.isidentifier():
        return "train", entry
    return split, pattern


def _split_files(spec: SourceSpec) -> dict[str, list[str]]:
    """{split: files}, by :func:`split_entry`."""
    out: dict[str, list[str]] = {}
    for entry in spec.data_files or (spec.path,):
        split, pattern = split_entry(entry)
        out.setdefault(split, []).extend(_expand_local(pattern))
    return out


def _listing_transient(err: BaseException) -> bool:
    """A bucket listing that may pass: the readers' transient errors, or the connection errors
    of the object stores' clients (botocore's, aiohttp's), which are not OSErrors by type."""
    names = {"EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError",
             "ClientConnectorError", "ConnectionClosedError"}  # fmt: skip
    return is_transient(err) or type(err).__name__ in names


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
    file_source = _looks_local(spec.path) or _is_remote(spec.path)
    if spec.is_files and not (spec.data_files and not file_source):
        try:
            files = _split_files(spec)
        except DataSourceError:
            raise
        except Exception as err:  # listing a bucket: retried like a read (open_dataset)
            if _listing_transient(err):
                raise _TransientOpenError(spec.path) from err
            raise
        if split not in files:
            raise DataSourceError(
                f"unknown split {split!r}; this source has: {', '.join(sorted(files))} "
                "(name split files as NAME=PATH in --data-files)"
            )
        builder, raw = _builder_for(files)
        remote = any(_is_remote(f) for f in files[split])
        if raw:
            return _tag(_lines_dataset(files[split], raw, spec), spec.path, remote)
        kwargs["data_files"] = {split: files[split]}
        if any(_is_url(f) for f in files[split]):
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
            raise DataSourceError(f"{what}: unknown split {split!r}: {first_line(msg)}") from None
        if "config" in msg.lower() or "name" in msg.lower():
            raise DataSourceError(f"{what}: {first_line(msg)} (pick one with --subset)") from None
        raise DataSourceError(f"{what}: {first_line(msg)}") from None
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
        f"{what}: cannot open the source ({first_line(str(err)) or type(err).__name__}); "
        "check the network (HF_HUB_OFFLINE/HF_DATASETS_OFFLINE), the id or the URL, "
        "or pass local files with --data-files"
    )


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
            setattr(err, FILE_ATTR, path)  # read by failed_file: which of the files broke
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
