"""A read error names the file that failed, not the source's first file.

Real files with the second of several damaged (a truncated gzip, a parquet file with its footer
overwritten), read through the real ``datasets`` streaming readers, and a real loopback HTTP
server whose second file keeps failing.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tests.support.http_server import FileServer

from lmstream.data.sources import DocumentStream, RetryPolicy, SourceSpec, open_dataset
from lmstream.errors import DataSourceError


def _jsonl_gz(path: Path, texts: list[str]) -> Path:
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.writelines(json.dumps({"text": t}) + "\n" for t in texts)
    return path


def _parquet(path: Path, texts: list[str]) -> Path:
    pq.write_table(pa.table({"text": texts}), path)
    return path


def _truncate(path: Path) -> None:
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])


def _zero_tail(path: Path) -> None:
    raw = path.read_bytes()
    path.write_bytes(raw[:8] + b"\0" * (len(raw) - 8))


@pytest.mark.parametrize(
    "write,damage,suffix",
    [(_jsonl_gz, _truncate, ".jsonl.gz"), (_parquet, _zero_tail, ".parquet")],
)
def test_read_error_names_the_failing_file(tmp_path, write, damage, suffix):
    files = [
        write(tmp_path / f"part-{k}{suffix}", [f"doc {k} {i}" for i in range(5)]) for k in range(3)
    ]
    damage(files[1])
    stream = DocumentStream(
        open_dataset(SourceSpec.from_files([str(f) for f in files]), "train"), "text"
    )
    with pytest.raises(DataSourceError) as info:
        list(stream)
    message = str(info.value)
    assert f"part-1{suffix}: read failed" in message, message
    assert "part-0" not in message


def test_read_error_after_retries_names_the_failing_url():
    # part-1 is missing on the server: every retry re-reads part-0 fine and fails on part-1.
    with FileServer({"part-0.jsonl": b'{"text": "doc 0"}\n'}) as server:
        urls = [server.url("part-0.jsonl"), server.url("part-1.jsonl")]
        retry = RetryPolicy(max_retries=2, initial_delay=0.001, max_delay=0.01)
        stream = DocumentStream(
            open_dataset(SourceSpec.from_files(urls), "train"), "text", retry=retry
        )
        with pytest.raises(DataSourceError) as info:
            list(stream)
    assert str(info.value).startswith(f"{urls[1]}: read failed after 2 retries"), str(info.value)
