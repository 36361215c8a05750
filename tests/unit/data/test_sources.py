"""data/sources.py on real files and a real loopback HTTP server: bad records, positions, retries."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tests.support.http_server import Faults, FileServer

from lmstream.config import StreamingConfig
from lmstream.data.sources import (
    DocumentStream,
    RetryPolicy,
    SourceSpec,
    is_transient,
    open_dataset,
    shard_for,
)
from lmstream.errors import DataSourceError

FAST = RetryPolicy(initial_delay=0.001, max_delay=0.01)


def _docs(n: int, pad: int = 0) -> list[str]:
    return [f"document {i} " + "w" * pad for i in range(n)]


def _jsonl(path: Path, texts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    return path


def _parquet(path: Path, texts: list[str], rows_per_group: int = 100) -> Path:
    pq.write_table(pa.table({"text": texts}), path, row_group_size=rows_per_group)
    return path


def _stream(files: list[str], **kw) -> DocumentStream:
    return DocumentStream(open_dataset(SourceSpec.from_files(files), "train"), "text", **kw)


def test_bad_records_are_skipped_and_counted_by_reason(tmp_path):
    lines = [
        b'{"text": "good one"}',
        b'{"other": "x"}',
        b'{"text": null}',
        b'{"text": 5}',
        b'{"text": ["a"]}',
        b'{"text": ""}',
        b'{"text": "   "}',
        b'{"text": "lone \\udc80 surrogate"}',
        b'{"text": "raw \xff\xfe bytes"}',
        b"{not json",
        b'{"text": "' + b"x" * 100 + b'"}',
        b'{"text": "good two"}',
    ]
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    stream = _stream([str(path)], max_chars=50)
    assert list(stream) == ["good one", "good two"]
    assert stream.skipped == {
        "missing_field": 2,
        "not_string": 2,
        "empty": 2,
        "invalid_utf8": 2,
        "invalid_json": 1,
        "too_long": 1,
    }
    assert stream.documents == 2 and stream.bytes == len("good onegood two")


def test_parquet_binary_and_text_files(tmp_path):
    table = pa.table({"text": pa.array([b"ok bytes", b"\xff\xfe", b"", "caf\u00e9".encode()])})
    pq.write_table(table, tmp_path / "b.parquet")
    stream = _stream([str(tmp_path / "b.parquet")])
    assert list(stream) == ["ok bytes", "caf\u00e9"]
    assert stream.skipped == {"invalid_utf8": 1, "empty": 1}
    (tmp_path / "t.txt").write_bytes(b"line one\n\nline \xff two\nline three\n")
    stream = _stream([str(tmp_path / "t.txt")])
    assert list(stream) == ["line one", "line three"]
    assert stream.skipped == {"empty": 1, "invalid_utf8": 1}


def test_compressed_globs_and_folders(tmp_path):
    texts = _docs(30)
    with gzip.open(tmp_path / "a.jsonl.gz", "wt", encoding="utf-8") as f:
        f.writelines(json.dumps({"text": t}) + "\n" for t in texts[:20])
    _jsonl(tmp_path / "b.jsonl", texts[20:])
    assert list(_stream([str(tmp_path / "*.jsonl*")])) == texts
    assert list(_stream([str(tmp_path)])) == texts


@pytest.mark.parametrize("kind", ["jsonl", "parquet"])
@pytest.mark.parametrize("stop", [0, 1, 6, 7, 33, 99])
def test_state_dict_resumes_exactly(tmp_path, kind, stop):
    texts = _docs(100)
    files = [
        str(_jsonl(tmp_path / "a.jsonl", texts[:40])),
        str(_jsonl(tmp_path / "b.jsonl", texts[40:])),
    ]
    if kind == "parquet":
        files = [str(_parquet(tmp_path / "a.parquet", texts, rows_per_group=13))]
    first = _stream(files, batch_size=7)
    it = iter(first)
    seen = [next(it) for _ in range(stop)]
    state = json.loads(json.dumps(first.state_dict()))  # JSON-able
    second = _stream(files)  # another batch size: the saved one wins
    second.load_state_dict(state)
    assert seen + list(second) == texts
    assert second.documents == 100


def test_state_counts_skips_once(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"text": "a"}\n{"x": 1}\n{"text": "b"}\n{"x": 2}\n{"text": "c"}\n')
    first = _stream([str(path)], batch_size=2)
    it = iter(first)
    assert [next(it), next(it)] == ["a", "b"]
    second = _stream([str(path)])
    second.load_state_dict(first.state_dict())
    assert list(second) == ["c"]
    assert second.skipped == {"missing_field": 2}


def test_errors_are_one_clear_line(tmp_path):
    _jsonl(tmp_path / "a.jsonl", _docs(3))
    with pytest.raises(DataSourceError, match="file not found"):
        open_dataset(SourceSpec.from_files([str(tmp_path / "nope.jsonl")]), "train")
    with pytest.raises(DataSourceError, match="no files match"):
        open_dataset(SourceSpec.from_files([str(tmp_path / "*.parquet")]), "train")
    with pytest.raises(
        DataSourceError, match=r"unknown split 'validation'; this source has: train"
    ):
        open_dataset(SourceSpec.from_files([str(tmp_path / "a.jsonl")]), "validation")
    with pytest.raises(DataSourceError, match="unsupported file type .xml"):
        (tmp_path / "a.xml").write_text("<a/>")
        open_dataset(SourceSpec.from_files([str(tmp_path / "a.xml")]), "train")
    spec = SourceSpec.from_files([str(tmp_path / "a.jsonl")], text_field="body")
    with pytest.raises(DataSourceError, match="text field 'body' not found"):
        list(DocumentStream(open_dataset(spec, "train"), "body"))
    _parquet(tmp_path / "p.parquet", _docs(3))
    ds = open_dataset(SourceSpec.from_files([str(tmp_path / "p.parquet")]), "train")
    with pytest.raises(DataSourceError, match="records have: text"):
        list(DocumentStream(ds, "content"))


def test_named_split_files(tmp_path):
    _jsonl(tmp_path / "t.jsonl", ["train doc"])
    _jsonl(tmp_path / "v.jsonl", ["valid doc"])
    spec = SourceSpec.from_files([f"train={tmp_path}/t.jsonl", f"validation={tmp_path}/v.jsonl"])
    assert list(DocumentStream(open_dataset(spec, "validation"), "text")) == ["valid doc"]


def test_unreachable_hub_fails_fast():
    sc = StreamingConfig(dataset="no-such-org/no-such-set")
    spec = SourceSpec.from_source(sc.source_list()[0], sc)
    assert not spec.is_files
    with pytest.raises(DataSourceError, match="no-such-org/no-such-set"):
        open_dataset(spec, "train")


@pytest.mark.parametrize("count", [2, 3])
def test_shard_for_is_a_partition(tmp_path, count):
    texts = _docs(60)
    files = [str(_jsonl(tmp_path / f"{i}.jsonl", texts[i * 10 : i * 10 + 10])) for i in range(6)]
    parts = [
        list(
            DocumentStream(
                shard_for(open_dataset(SourceSpec.from_files(files), "train"), i, count), "text"
            )
        )
        for i in range(count)
    ]
    assert sorted(d for p in parts for d in p) == sorted(texts)
    assert all(parts)
    one = _parquet(tmp_path / "one.parquet", texts)  # 1 shard: every count-th record
    parts = [
        list(
            DocumentStream(
                shard_for(open_dataset(SourceSpec.from_files([str(one)]), "train"), i, count),
                "text",
            )
        )
        for i in range(count)
    ]
    assert parts[0] == texts[::count]


def test_retry_policy_backoff_and_classification():
    policy = RetryPolicy(initial_delay=1, max_delay=8, jitter=0.0)
    assert [policy.delay(a) for a in range(1, 6)] == [1, 2, 4, 8, 8]
    jittered = RetryPolicy(initial_delay=1, jitter=0.5)
    assert all(0.5 <= jittered.delay(1) <= 1.0 for _ in range(50))
    assert is_transient(ConnectionResetError())
    wrapped = RuntimeError("outer")
    wrapped.__cause__ = TimeoutError()
    assert is_transient(wrapped)
    assert not is_transient(ValueError("bad"))


@pytest.mark.parametrize(
    "name,kinds",
    [
        pytest.param("d.jsonl", ("drop", "503", "429", "500", "truncate"), marks=pytest.mark.slow),
        ("d.parquet", ("drop", "truncate")),
    ],
)
def test_retries_resume_at_the_right_record(tmp_path, name, kinds):
    # Big enough for several 5 MiB range requests (fsspec's block size), so faults hit mid-stream.
    texts = _docs(12_000, pad=1000)
    files = {"d.jsonl": _jsonl(tmp_path / "d.jsonl", texts).read_bytes()}
    files["d.parquet"] = _parquet(tmp_path / "d.parquet", texts, rows_per_group=1000).read_bytes()
    with FileServer(files, Faults(kinds=kinds, on_requests={3, 4, 6})) as server:
        ds = open_dataset(SourceSpec.from_files([server.url(name)]), "train")
        stream = DocumentStream(ds, "text", retry=FAST)
        got = list(stream)
        assert server.faults.injected, "no fault was injected: the test would prove nothing"
    assert got == texts  # every document exactly once, in order
    assert stream.retries >= 1


def test_retries_give_up_with_a_clear_error(tmp_path):
    files = {"d.jsonl": _jsonl(tmp_path / "d.jsonl", _docs(10)).read_bytes()}
    with FileServer(files) as server:
        ds = open_dataset(SourceSpec.from_files([server.url("d.jsonl")]), "train")
        server.faults = Faults(kinds=("503",), rate=1.0)
        stream = DocumentStream(ds, "text", retry=RetryPolicy(max_retries=2, initial_delay=0.001))
        with pytest.raises(DataSourceError, match="after 2 retries"):
            list(stream)
