"""The shuffled reading order of a pass (issue #20, "a shuffle worth the name").

Traced document by document (tests.support.doc_trace): with shuffling on, each epoch reads the
files in a new order drawn from the seed, several at once, while every document of the pass is
still trained once per epoch and the holdout stays the first documents in source order.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from tests.support.doc_trace import docs, drive, ids_of, write_uneven
from tokenizers import Tokenizer

from lmstream.config import parse_training_config
from lmstream.data.documents import TextSource, shuffled_reading
from lmstream.data.loader import build_train_loader
from lmstream.data.shuffle import Position, WindowedDocuments
from lmstream.data.sources import SourceSpec
from lmstream.tokenizer import train_bpe

SIZES = [6, 3, 8, 5, 7, 4, 6, 6] * 3  # 24 uneven files (8 read at once), ids numbered across


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return train_bpe(docs(200), 400, ["<|endoftext|>", "<|pad|>"])


def _file_of(doc: int) -> int:
    return int(np.searchsorted(np.cumsum(SIZES), doc, side="right"))


def _streams(tmp_path: Path, tokenizer: Tokenizer) -> dict[tuple, list[int]]:
    """{(epoch, worker): document ids in the order that worker trained them}, 2 workers."""
    paths, _ = write_uneven(tmp_path / "data", SIZES, "parquet")
    run = tmp_path / "run"
    run.mkdir()
    tokenizer.save(str(run / "tokenizer.json"))
    cfg = parse_training_config(
        {
            "model": {"hidden_size": 8, "intermediate_size": 8, "num_layers": 1,
                      "num_attention_heads": 2},
            "tokenizer": {"tokenizer_json": str(run / "tokenizer.json")},
            "data": {"batch_size": 2, "sequence_length": 32, "shuffle_buffer_size": 16,
                     "num_workers": 2, "validation_documents": 4, "train_shards": paths},
            "optimizer": {"learning_rate": 1e-3}, "scheduler": {"total_steps": 10},
        },
        run,
    )  # fmt: skip
    records, _ = drive([build_train_loader(cfg, tokenizer, run, sync_passes=True)], epochs=2)
    parts: dict[tuple, list[np.ndarray]] = defaultdict(list)
    for epoch, _rank, worker, tokens, weight in records:
        if weight > 0:
            parts[(epoch, worker)].append(tokens)
    return {key: ids_of(np.concatenate(p), tokenizer) for key, p in parts.items()}


def test_each_epoch_reads_the_files_in_a_new_order_several_at_once(tmp_path, tokenizer):
    streams = _streams(tmp_path, tokenizer)
    for epoch in (0, 1):
        trained = Counter(d for (e, _), ids in streams.items() if e == epoch for d in ids)
        assert trained == Counter(range(4, sum(SIZES))), "every document once, holdout skipped"
    order = {e: streams[(e, 0)] for e in (0, 1)}
    common = sorted(set(order[0]) & set(order[1]))
    ranks = [[order[e].index(d) for d in common] for e in (0, 1)]
    # Read in source order with a window shuffle, epoch 1 repeats epoch 0 up to the window.
    assert np.corrcoef(ranks[0], ranks[1])[0, 1] < 0.5, "each epoch must read in a new order"
    for e in (0, 1):
        # A window of 16 documents in source order spans 3-5 files; read interleaved, more.
        assert len({_file_of(d) for d in order[e][:8]}) >= 6, order[e][:8]


def test_shuffled_pass_keeps_the_prefix_and_holdout_in_source_order(tmp_path: Path) -> None:
    """max_samples and the holdout cut a file in the middle: the pass is still exactly
    documents skip..max_samples-1 of the source, dealt disjointly to 3 workers."""
    paths, texts = write_uneven(tmp_path / "data", SIZES, "jsonl")
    spec = SourceSpec.from_files(paths)
    for epoch in (0, 1):
        seen: list[str] = []
        for g in range(3):
            source = TextSource(
                spec, "train", worker=g, workers=3, max_samples=40, skip_first=15,
                **shuffled_reading(8, seed=3),
            )  # fmt: skip
            windows = WindowedDocuments(source, window_size=8, seed=3, worker=g)
            seen += [d for _, d in windows.iterate(Position(epoch=epoch))]
        assert sorted(seen) == sorted(texts[15:40])


def test_shuffled_pass_resumes_exactly_from_any_position(tmp_path: Path) -> None:
    """The small state (open files, their positions and parts, whose turn) resumes the
    sequence exactly, in a pass that rotates its files (epoch 1), also from a state taken after
    an earlier resume."""
    paths, _ = write_uneven(tmp_path / "data", SIZES, "parquet")
    spec = SourceSpec.from_files(paths)

    def source() -> TextSource:
        return TextSource(spec, "train", skip_first=3, **shuffled_reading(16, seed=9))

    full = source()
    full.open(1, None)
    everything = full.read(10_000)
    for cuts in ([5, 37], [1, 2, 60], [7, 29, 53, 71, 97, 113]):
        src, got, state = source(), [], None
        for n in [*cuts, 10_000]:
            src = source()
            src.open(1, state)
            got += src.read(n - len(got) if n < 10_000 else n)
            state = src.state()
        assert got == everything
