"""The tokenizer's sample of a mixture (lmstream.tokenizer_sample): each source's share of the
characters matches its weight, deterministically, read from real local streams."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from lmstream import tokenizer_sample
from lmstream.data.sources import DocumentStream, SourceSpec, open_dataset
from lmstream.tokenizer_sample import MixtureSample


def _stream(path: Path, texts: list[str]) -> DocumentStream:
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    return DocumentStream(open_dataset(SourceSpec(path=str(path)), "train"), "text", batch_size=64)


def _texts(prefix: str, n: int, shortest: int, longest: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [f"{prefix}{i} " + "x" * rng.randint(shortest, longest) for i in range(n)]


@pytest.mark.parametrize(
    "weights", [[0.75, 0.25], [0.7, 0.2, 0.1], [1.0, 0.0, 3.0]], ids=["two", "three", "zero"]
)
def test_character_shares_match_the_weights(tmp_path, weights):
    # unequal document lengths per source: 10-60, 200-900 and 50-3000 characters
    lengths = [(10, 60), (200, 900), (50, 3000)][: len(weights)]
    texts = [_texts(f"s{k}-", 3000, lo, hi, k) for k, (lo, hi) in enumerate(lengths)]

    def draw() -> tuple[list[str], MixtureSample]:
        streams = [_stream(tmp_path / f"s{k}.jsonl", t) for k, t in enumerate(texts)]
        sample = MixtureSample(streams, weights, [None] * len(weights), batch_size=100)
        return [d for batch in sample.batches() for d in batch], sample

    docs, sample = draw()
    total = sum(sample.chars)
    assert total == sum(len(d) for d in docs) and total > 100_000
    longest = max(hi for _, hi in lengths) + 10
    for share, weight in zip(sample.shares(), weights, strict=True):
        assert abs(share - weight / sum(weights)) <= longest / total  # within one document
    # the sample ended when the last source ended its first pass (weight 0: never read)
    assert {i for i, _ in sample.ran_out} == {i for i, w in enumerate(weights) if w > 0}
    assert sample.ran_out[-1][1] == len(docs)
    assert draw()[0] == docs  # deterministic


def test_one_source_is_its_first_max_samples_documents_in_order(tmp_path):
    texts = _texts("d", 500, 5, 50, 0)
    sample = MixtureSample([_stream(tmp_path / "a.jsonl", texts)], [1.0], [120], batch_size=50)
    docs = [d for batch in sample.batches() for d in batch]
    assert docs == texts[:120] and sample.documents == 120 and sample.shares() == [1.0]


@pytest.mark.parametrize("kept", [True, False], ids=["from-memory", "re-opened"])
def test_a_source_that_ends_first_is_read_again_so_the_shares_hold(tmp_path, monkeypatch, kept):
    """A short source (100 documents) at half the weight of a long one (1,000): the short one is
    read again from its start each time it ends, as training repeats it, until the long one has
    ended its pass. Going on with the long one alone gave it ~91% of the characters (99.5% for
    a small file beside a web corpus); stopping at the first end left the long one's size
    unknown to the holdout."""
    long_texts, short_texts = _texts("a-", 1000, 20, 40, 1), _texts("b-", 100, 20, 40, 2)
    paths = [tmp_path / "a.jsonl", tmp_path / "b.jsonl"]
    texts = [long_texts, short_texts]

    def reopen(i: int) -> DocumentStream:
        return _stream(paths[i], texts[i])

    if not kept:  # a pass too large to keep in memory is re-opened instead
        monkeypatch.setattr(tokenizer_sample, "_KEEP_CHARS", 100)
    sample = MixtureSample([reopen(0), reopen(1)], [0.5, 0.5], [None, None], 64, reopen=reopen)
    docs = [d for batch in sample.batches() for d in batch]
    assert all(abs(share - 0.5) < 0.01 for share in sample.shares()), sample.shares()
    assert set(docs) == set(long_texts + short_texts)  # every document, the short ones repeated
    assert [i for i, _ in sample.ran_out] == [1, 0] and sample.ran_out[-1][1] == len(docs)
    assert sample.streams[1].documents == 100 and sample.again[1] >= 8
    assert sample.documents == len(docs)
    assert sample.reopened[1] == (0 if kept else sample.again[1])
    # with a max_samples, a pass of the short source is its first max_samples documents
    sample = MixtureSample([reopen(0), reopen(1)], [0.5, 0.5], [300, 20], 64, reopen=reopen)
    docs = [d for batch in sample.batches() for d in batch]
    assert set(d for d in docs if d.startswith("b-")) == set(short_texts[:20])
    assert sum(d.startswith("a-") for d in docs) == 300


def _open_files() -> int:
    return len(list(Path("/proc/self/fd").iterdir()))


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts open files in /proc")
def test_re_opened_passes_do_not_keep_their_files_open(tmp_path, monkeypatch):
    """A source too large to keep, re-opened 800 times beside a longer one: each re-opened pass
    kept its file open until the sample ended (one descriptor per pass: a large file beside a
    corpus 1,000 times larger ran out of descriptors, "Too many open files")."""
    monkeypatch.setattr(tokenizer_sample, "_KEEP_CHARS", 10)
    paths = [tmp_path / "long.jsonl", tmp_path / "short.jsonl"]
    texts = [_texts("a-", 800, 20, 40, 1), _texts("b-", 1, 20, 40, 2)]
    streams = [_stream(p, t) for p, t in zip(paths, texts, strict=True)]
    before = _open_files()

    def reopen(i: int) -> DocumentStream:
        return DocumentStream(open_dataset(SourceSpec(path=str(paths[i])), "train"), "text")

    sample = MixtureSample(streams, [0.5, 0.5], [None, None], 64, reopen=reopen)
    assert sum(len(b) for b in sample.batches()) > 1500 and sample.again[1] > 700
    assert _open_files() <= before + 5
    assert sample.bytes == sum(len(t.encode()) for t in texts[0]) + (sample.again[1] + 1) * len(
        texts[1][0].encode()
    )


def test_a_re_opened_pass_that_gives_nothing_ends_the_source(tmp_path, monkeypatch):
    """A source whose re-opened pass gives no document (its file emptied, a server that now
    answers nothing) was re-opened without end: the others go on alone instead."""
    monkeypatch.setattr(tokenizer_sample, "_KEEP_CHARS", 10)
    long_texts = _texts("a-", 300, 20, 40, 1)
    streams = [_stream(tmp_path / "a.jsonl", long_texts), _stream(tmp_path / "b.jsonl", ["b" * 50])]
    empty = tmp_path / "empty.jsonl"
    empty.write_text("", encoding="utf-8")

    def reopen(i: int) -> DocumentStream:
        return DocumentStream(open_dataset(SourceSpec(path=str(empty)), "train"), "text")

    sample = MixtureSample(streams, [0.5, 0.5], [None, None], 64, reopen=reopen)
    docs = [d for batch in sample.batches() for d in batch]
    assert docs.count("b" * 50) == 1 and len(docs) == 301
    assert sample.again[1] == 1 and [i for i, _ in sample.ran_out] == [1, 0]


def test_a_first_pass_that_gives_nothing_is_not_read_again(tmp_path):
    """A source whose first pass gives no document (each one a bad record): it is neither
    replayed from memory (an empty pass) nor re-opened; the other is read to its end alone."""
    texts = _texts("a-", 50, 20, 40, 1)
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json\n" * 5, encoding="utf-8")
    streams = [
        _stream(tmp_path / "a.jsonl", texts),
        DocumentStream(open_dataset(SourceSpec(path=str(bad)), "train"), "text"),
    ]
    reopened: list[int] = []

    def reopen(i: int) -> DocumentStream:
        reopened.append(i)
        return DocumentStream(open_dataset(SourceSpec(path=str(bad)), "train"), "text")

    sample = MixtureSample(streams, [0.5, 0.5], [None, None], 64, reopen=reopen)
    assert [d for batch in sample.batches() for d in batch] == texts
    assert sample.again == [0, 0] and reopened == []
