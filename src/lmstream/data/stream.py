"""Read clean documents from a streaming dataset, with retries and an exact position.

:class:`DocumentStream` reads the ``IterableDataset`` that ``sources.open_dataset`` returns and
adds what the library does not do:

* **Bad records never end a run.** Records missing the field, not strings, empty, invalid UTF-8
  or huge are skipped and counted by reason (jsonl/txt lines that did not parse arrive marked
  with ``BAD_KEY`` by the sources module's raw-lines reader).
* **Transient read errors are retried** with exponential backoff and jitter, resuming at the
  batch where the error happened; a read error that ends the run names the file that failed.
* **Exact positions.** ``DocumentStream.state_dict()`` is the library's state at the start of the
  current batch plus the number of records consumed from it, so a resume re-reads at most one
  batch and never loses or repeats a document (datasets' state taken inside a batch from
  ``.iter(batch_size)`` only has batch granularity, and states from ``.iter`` and per-example
  iteration are not interchangeable, so the batch size is part of the state).

``sources`` re-exports the names here, so callers may import either module.
"""

from __future__ import annotations

import os
import random
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import datasets

from lmstream.errors import ConfigError, DataSourceError
from lmstream.failures import is_transient

DEFAULT_MAX_CHARS = 1_000_000
DEFAULT_BATCH_SIZE = 1000
BAD_KEY = "_lmstream_bad"  # reason a raw line could not become a record (jsonl/txt only)
FILE_ATTR = "_lmstream_file"  # set on a read error: the file being read when it happened
# Retry settings for flaky links, read from the environment when a retry policy is made: retries
# before a read error ends the run, and the backoff's first and largest delay.
MAX_RETRIES_ENV = "LMSTREAM_SOURCE_MAX_RETRIES"
RETRY_DELAY_ENV = "LMSTREAM_SOURCE_RETRY_DELAY"
MAX_RETRY_DELAY_ENV = "LMSTREAM_SOURCE_MAX_RETRY_DELAY"


def env_number(name: str, default: float, cast: type = float) -> float:
    """The non-negative number in environment variable ``name``, or ``default`` when unset."""
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


# ----------------------------------------------------------------------------------- retries


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter (AWS architecture blog, "Exponential Backoff And Jitter")."""

    max_retries: int = field(default_factory=lambda: env_number(MAX_RETRIES_ENV, 8, int))
    initial_delay: float = field(default_factory=lambda: env_number(RETRY_DELAY_ENV, 1.0))
    max_delay: float = field(default_factory=lambda: env_number(MAX_RETRY_DELAY_ENV, 60.0))
    multiplier: float = 2.0
    jitter: float = 0.5  # fraction of each delay drawn at random, so ranks don't retry in lockstep

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before retry number ``attempt`` (1-based)."""
        base = min(self.max_delay, self.initial_delay * self.multiplier ** (attempt - 1))
        return base * (1.0 - self.jitter * (rng or random).random())

    def budget_s(self, read_timeout: float) -> float:
        """The longest a read can take to fail for good: every attempt waits out the read
        timeout and every backoff is at its largest (peers must wait at least this long)."""
        backoff = sum(
            min(self.max_delay, self.initial_delay * self.multiplier ** (a - 1))
            for a in range(1, self.max_retries + 1)
        )
        return (self.max_retries + 1) * read_timeout + backoff


def failed_file(err: BaseException) -> str | None:
    """The file that was being read when ``err`` was raised, where it can be told.

    The raw-lines reader tags its errors with the file. datasets' own parquet, csv and json
    readers only log it ("Failed to read file ...") and re-raise, so the file is taken from the
    ``file`` local of their ``_generate_tables`` frame in the traceback.
    """
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        tagged = getattr(err, FILE_ATTR, None)
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
                    hint = "; check the credentials in the environment" * _denied(err)
                    raise DataSourceError(
                        f"{self._name(err)}: read failed: {_describe(err)}{hint}"
                    ) from err
                attempt += 1
                if attempt > self.retry.max_retries:
                    raise DataSourceError(
                        f"{self._name(err)}: read failed after {self.retry.max_retries} retries: "
                        f"{_describe(err)}; check the network or the source"
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
        # A refusal (403: PermissionError from s3fs/gcsfs) is no dropped connection: retrying it
        # only delays the answer, which is the credentials.
        remote = getattr(self.dataset, "_lmstream_remote", False)
        return is_transient(err) or (
            remote
            and not _denied(err)
            and (isinstance(err, OSError) or type(err).__module__.startswith("aiohttp"))
        )

    def _name(self, err: BaseException | None = None) -> str:
        """The file that ``err`` came from if known, else the source as it was given."""
        found = failed_file(err) if err is not None else None
        return found or getattr(self.dataset, "_lmstream_source", None) or "data source"


def _denied(err: BaseException) -> bool:
    return isinstance(err, PermissionError)


def _describe(err: BaseException) -> str:
    return f"{type(err).__name__}: {first_line(str(err))}"


def first_line(text: str) -> str:
    return text.strip().splitlines()[0][:300] if text.strip() else ""
