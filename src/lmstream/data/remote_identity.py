"""What a remote source holds right now, cheaply: the validation cache's content key for it.

A local file's (path, size, mtime) tells when it was edited; a remote source needs one request:

* a Hub dataset: the commit its revision resolves to (``HfApi.dataset_info(...).sha``); a
  revision that already is a commit sha is its own answer, with no request;
* an http(s) URL: its ETag, else its Last-Modified, with its size (fsspec's ``info``: a HEAD
  request, a GET whose body is not read when the server refuses HEAD);
* an object-store URL (s3://, gs://, hf://): each file's ETag / generation / blob id and size,
  from one ``info`` (a file) or one listing (a folder or a glob).

An identity that cannot be had (offline, HF_HUB_OFFLINE, a server that refuses or sends no
ETag or Last-Modified) is reported with its reason instead of failing the run: the caller
decides what to do with a cache it cannot check (``validation._cache_path``).
"""

from __future__ import annotations

import glob
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from lmstream.data.object_store import filesystem, is_object_store
from lmstream.data.sources import SourceSpec, split_entry
from lmstream.data.stream import first_line

CHECK_TIMEOUT_S = 20.0  # one start-up request; a source slower than this is reported unchecked
_COMMIT_SHA = re.compile(r"[0-9a-f]{40}")
# Fields of an fsspec info dict that change with the content (http headers, s3fs, gcsfs, hf://).
_CONTENT_FIELDS = ("ETag", "etag", "Last-Modified", "LastModified", "md5Hash", "generation",
                   "blob_id", "Content-MD5", "Digest")  # fmt: skip


@dataclass(frozen=True)
class RemoteIdentity:
    """The remote sources of a plan and what each holds now (``parts``, JSON-able), or why that
    could not be told (``unknown``: the source and the reason, the first that failed)."""

    sources: tuple[str, ...] = ()
    parts: tuple = ()
    unknown: tuple[str, str] | None = None


class _Unchecked(Exception):
    """The identity of one source cannot be had; the message says why."""


def remote_identity(specs: Iterable[SourceSpec]) -> RemoteIdentity:
    """The identity of the remote sources among ``specs`` (hub ids, URLs); local files are left
    to the caller's (path, size, mtime) and a plan without remote sources gets an empty one."""
    sources: list[str] = []
    parts: list = []
    unknown = None
    for spec in dict.fromkeys(specs):  # a split-validated plan names its spec twice
        for name, check in _remote_checks(spec):
            sources.append(name)
            if unknown is not None:
                continue
            try:
                parts.append([name, check()])
            except Exception as err:  # any failure: the run goes on, the caller says so
                unknown = (name, unchecked_reason(err))
    return RemoteIdentity(tuple(sources), tuple(parts), unknown)


def _remote_checks(spec: SourceSpec) -> list[tuple[str, Callable[[], Any]]]:
    """(source name, a call returning its identity) for each remote part of ``spec``."""
    if spec.is_hub:
        return [(spec.path, lambda: hub_commit(spec.path, spec.revision))]
    checks = []
    for entry in spec.data_files or (spec.path,):
        _, pattern = split_entry(entry)
        if pattern.startswith(("http://", "https://")):
            checks.append((pattern, lambda url=pattern: _http_identity(url)))
        elif is_object_store(pattern):
            checks.append((pattern, lambda url=pattern: _object_identity(url)))
    return checks


def is_commit(revision: str | None) -> bool:
    """Whether a Hub ``revision`` is a commit sha (not a branch or tag that can move)."""
    return bool(revision and _COMMIT_SHA.fullmatch(revision))


def hub_commit(repo_id: str, revision: str | None) -> str:
    """The commit a Hub dataset's ``revision`` (None: main) points at now (also what
    ``pinning`` pins a run to)."""
    if is_commit(revision):
        return revision  # a commit never changes
    from huggingface_hub import HfApi

    return HfApi().dataset_info(repo_id, revision=revision, timeout=CHECK_TIMEOUT_S).sha


def _http_identity(url: str) -> dict:
    import aiohttp
    import fsspec

    timeout = aiohttp.ClientTimeout(total=CHECK_TIMEOUT_S)
    fs = fsspec.filesystem("http", client_kwargs={"timeout": timeout})
    return _content_fields(fs.info(url))


def _object_identity(url: str) -> list:
    fs = filesystem(url)
    fs.invalidate_cache()  # a listing cached by an earlier read in this process may be stale
    if glob.has_magic(url):
        found = fs.glob(url, detail=True)
    else:
        info = fs.info(url)
        found = fs.find(url, detail=True) if info.get("type") == "directory" else {url: info}
    if not found:
        raise _Unchecked("no files found")
    return [[name, _content_fields(found[name])] for name in sorted(found)]


def _content_fields(info: dict) -> dict:
    fields = {k: str(info[k]) for k in _CONTENT_FIELDS if info.get(k) is not None}
    if not fields:
        raise _Unchecked("the server sends no ETag or Last-Modified")
    return fields | {"size": info.get("size")}


def unchecked_reason(err: BaseException) -> str:
    """Why a source's identity could not be had, in a few words (offline, the error)."""
    if isinstance(err, _Unchecked):
        return str(err)
    if type(err).__name__ == "OfflineModeIsEnabled":
        return "offline: HF_HUB_OFFLINE is set"
    if isinstance(err, FileNotFoundError) and err.__cause__ is not None:
        err = err.__cause__  # fsspec's http info wraps the real error (refused, 404, timeout)
    text = first_line(str(err))
    return f"{type(err).__name__}: {text}" if text else type(err).__name__
