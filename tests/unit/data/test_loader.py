"""The train loader: sharding coverage, validation holdout, exact resume, epochs, failures.

Real files (jsonl, parquet, token shards) written in the test, a real byte-level BPE trained in
the test, real DataLoader worker processes. Documents start with a unique ``docNNNN`` id, so a
decoded token stream tells which documents it holds.
"""

from __future__ import annotations

import io
import json
import multiprocessing
import os
import signal
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from tests.support.doc_trace import drive, trained_ids
from tokenizers import Tokenizer

from lmstream.config import StreamingConfig, dump_streaming_config, parse_training_config
from lmstream.data.documents import TextSource
from lmstream.data.loader import build_train_loader, build_validation_batches
from lmstream.data.shuffle import Position, WindowedDocuments
from lmstream.data.sources import SourceSpec
from lmstream.data.token_shards import TokenShards, write_token_shards
from lmstream.data.validation import load_validation_set
from lmstream.errors import CheckpointError, ConfigError, DataSourceError, LmstreamError
from lmstream.tokenizer import train_bpe

WORDS = ["alpha", "beta", "gamma", "delta", "river", "stone", "light", "shadow", "north", "south"]


def _corpus(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [
        f"doc{i:04d} " + " ".join(rng.choice(WORDS, size=int(rng.integers(2, 12))))
        for i in range(n)
    ]


def _write_jsonl(path: Path, texts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return path


def _write_parquet(folder: Path, texts: list[str], files: int = 4) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, part in enumerate(np.array_split(np.array(texts, dtype=object), files)):
        p = folder / f"part-{k}.parquet"
        pq.write_table(pa.table({"text": list(part)}), p, row_group_size=16)
        paths.append(str(p))
    return paths


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    tok = train_bpe(_corpus(300), 400, ["<|endoftext|>", "<|pad|>"])
    return tok


def _config(run_dir: Path, tokenizer: Tokenizer, **data):
    run_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(run_dir / "tokenizer.json"))
    data = {"batch_size": 2, "sequence_length": 24, "validation_documents": 4, **data}
    return parse_training_config(
        {
            "model": {"hidden_size": 8, "intermediate_size": 8, "num_layers": 1,
                      "num_attention_heads": 2},
            "tokenizer": {"tokenizer_json": str(run_dir / "tokenizer.json")},
            "data": data,
            "optimizer": {"learning_rate": 1e-3},
            "scheduler": {"total_steps": 10},
        },
        run_dir,
    )  # fmt: skip


def _streaming(run_dir: Path, **fields) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    dump_streaming_config(StreamingConfig(**fields), run_dir / "streaming_config.json")


def _take(loader, n: int) -> list:
    it = iter(loader)
    return [next(it) for _ in range(n)]


def _rows(batches) -> np.ndarray:
    return np.concatenate(
        [torch.cat([b.inputs, b.targets[:, -1:]], dim=1).numpy() for b in batches]
    )


def _doc_ids(tokens: np.ndarray, tokenizer: Tokenizer) -> list[int]:
    """Ids of the complete documents in a token stream (the piece after the last eot is cut)."""
    eot = tokenizer.token_to_id("<|endoftext|>")
    cuts = np.flatnonzero(tokens == eot)
    pieces = np.split(tokens[: cuts[-1]], cuts[:-1] + 1) if len(cuts) else []
    ids = []
    for piece in pieces:
        text = tokenizer.decode([int(t) for t in piece if t != eot])
        assert text.startswith("doc"), f"a row starts mid-document: {text!r}"
        ids.append(int(text[3:7]))
    return ids


# ------------------------------------------------------------------------------ sharding


def _first_pass(source: TextSource, worker: int, window: int = 8) -> list[str]:
    windows = WindowedDocuments(source, window_size=window, seed=1, worker=worker)
    return [doc for _, doc in windows.iterate(Position())]  # one pass, then it ends


def test_sharding_covers_every_document_once(tmp_path: Path) -> None:
    texts = _corpus(96)
    spec = SourceSpec.from_files(_write_parquet(tmp_path / "pq", texts))  # 4 shards
    for world in range(1, 5):
        for workers in range(4):
            total = world * max(workers, 1)
            seen: list[str] = []
            for rank in range(world):
                for wid in range(max(workers, 1)):
                    g = rank * max(workers, 1) + wid  # the loader's global worker id
                    seen += _first_pass(TextSource(spec, "train", worker=g, workers=total), g)
            assert sorted(seen) == sorted(texts), f"world {world} x {workers} workers"


@pytest.mark.parametrize(("world", "workers"), [(2, 2), (3, 0)])
def test_loader_sharding_and_holdout_end_to_end(tmp_path, tokenizer, world, workers) -> None:
    texts = _corpus(120)
    paths = _write_parquet(tmp_path / "pq", texts, files=3)
    cfg = _config(
        tmp_path / "run", tokenizer, train_shards=paths, num_workers=workers,
        shuffle_buffer_size=16, validation_documents=10,
    )  # fmt: skip
    held_out = _doc_ids(load_validation_set(cfg, tokenizer, tmp_path / "run").tokens, tokenizer)
    assert held_out == list(range(10))  # the first N documents of the source
    loaders = [
        build_train_loader(cfg, tokenizer, tmp_path / "run", rank=r, world_size=world,
                           sync_passes=True)
        for r in range(world)
    ]  # fmt: skip
    records, _ = drive(loaders, epochs=1)
    trained = trained_ids(records, _TraceTokenizer(tokenizer))[0]
    assert trained == Counter(range(10, 120)), "training must read every other document once"


class _TraceTokenizer:
    """This module's ``docNNNN`` ids read as doc_trace's ``doc-NNNNN`` ones."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer

    def token_to_id(self, token: str) -> int:
        return self.tokenizer.token_to_id(token)

    def decode(self, ids: list[int]) -> str:
        text = self.tokenizer.decode(ids)
        return f"doc-{int(text[3:7]):05d} {text[8:]}"


# ---------------------------------------------------------------------------- validation


def test_validation_split_fixed_and_cached(tmp_path: Path, tokenizer) -> None:
    train = _write_jsonl(tmp_path / "train.jsonl", _corpus(40))
    val = _write_jsonl(tmp_path / "val.jsonl", _corpus(200, seed=9)[100:])
    run = tmp_path / "run"
    _streaming(
        run, dataset=str(tmp_path), data_files=[f"train={train}", f"validation={val}"],
        validation_split="validation",
    )  # fmt: skip
    cfg = _config(run, tokenizer, validation_documents=90, batch_size=3)
    cfg.runtime.evaluation.max_batches = 4
    cfg.runtime.evaluation.batch_size = 3  # 12 sequences, split across the ranks
    per_rank = [build_validation_batches(cfg, tokenizer, run, rank=r, world_size=2) for r in (0, 1)]
    assert [len(b) for b in per_rank] == [2, 2]
    assert all(b.inputs.shape == (3, 24) for b in per_rank[0])
    again = build_validation_batches(cfg, tokenizer, run, rank=0, world_size=2)
    assert np.array_equal(_rows(again), _rows(per_rank[0])), "every evaluation: the same batches"
    rows0, rows1 = (set(map(tuple, _rows(b))) for b in per_rank)
    assert not rows0 & rows1, "ranks evaluate different rows"
    assert len(list((run / "validation").glob("validation-*.npz"))) == 1
    ids = set(_doc_ids(load_validation_set(cfg, tokenizer, run).tokens, tokenizer))
    assert ids == set(range(100, 190))  # from the validation split, not the training split
    # With a validation split, training holds nothing out.
    stream = _rows(_take(build_train_loader(cfg, tokenizer, run), 3)).reshape(-1)
    assert _doc_ids(stream, tokenizer)[:3] == [0, 1, 2]


def test_validation_too_small_is_a_clear_error(tmp_path: Path, tokenizer) -> None:
    train = _write_jsonl(tmp_path / "train.jsonl", _corpus(40))
    cfg = _config(tmp_path / "run", tokenizer, train_shards=[str(train)], validation_documents=1,
                  sequence_length=200)  # fmt: skip
    with pytest.raises(DataSourceError, match="raise data.validation_documents"):
        build_validation_batches(cfg, tokenizer, tmp_path / "run")


# --------------------------------------------------------------------------------- resume


def _resume_config(tmp_path: Path, tokenizer, mode: str, **data):
    texts = _corpus(36, seed=3)
    run = tmp_path / "run"
    if mode == "streaming":
        _streaming(run, dataset=str(_write_jsonl(tmp_path / "train.jsonl", texts)))
        return _config(run, tokenizer, **data), run
    if mode == "files":
        return _config(
            run, tokenizer, train_shards=_write_parquet(tmp_path / "pq", texts), **data
        ), run
    shards = write_token_shards(texts, tokenizer, tmp_path / "tokens", shard_tokens=150)
    return _config(run, tokenizer, train_shards=[str(shards.parent)], **data), run


def _roundtrip(state: dict) -> dict:
    """Through torch.save / torch.load(weights_only=True), as the checkpoint stores it."""
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("shuffle", [0, 8])
@pytest.mark.parametrize("mode", ["streaming", "files", "tokens"])
def test_exact_resume_twice(tmp_path: Path, tokenizer, mode: str, shuffle: int, workers: int):
    cfg, run = _resume_config(
        tmp_path, tokenizer, mode, shuffle_buffer_size=shuffle, num_workers=workers
    )
    full = _take(build_train_loader(cfg, tokenizer, run), 18)
    assert max(b.epoch for b in full) >= 1, "the run must cross an epoch boundary"
    got, state = [], None
    for _ in range(3):  # run 6 batches, save, resume in a fresh loader; twice in a row
        loader = build_train_loader(cfg, tokenizer, run)
        if state is not None:
            loader.load_state_dict(state)
        it = iter(loader)
        got += [next(it) for _ in range(6)]
        state = _roundtrip(loader.state_dict())
        del it
    assert np.array_equal(_rows(got), _rows(full)), (
        "resumed batches differ from the uninterrupted run"
    )
    assert [b.epoch for b in got] == [b.epoch for b in full]


def test_resume_refuses_changed_worker_count(tmp_path: Path, tokenizer) -> None:
    cfg, run = _resume_config(tmp_path, tokenizer, "tokens", num_workers=0)
    loader = build_train_loader(cfg, tokenizer, run)
    _take(loader, 2)
    state = loader.state_dict()
    cfg.data.num_workers = 1
    with pytest.raises(CheckpointError, match="num_workers 0 -> 1"):
        build_train_loader(cfg, tokenizer, run).load_state_dict(state)


# --------------------------------------------------------------------------------- epochs


def test_epochs_change_order_only_when_shuffling(tmp_path: Path) -> None:
    texts = _corpus(30)
    spec = SourceSpec.from_files([str(_write_jsonl(tmp_path / "t.jsonl", texts))])
    for window, should_change in [(64, True), (0, False)]:
        docs = WindowedDocuments(TextSource(spec, "train"), window_size=window, seed=5, worker=0)
        by_epoch = {e: [d for _, d in docs.iterate(Position(epoch=e))] for e in (0, 1)}
        assert sorted(by_epoch[0]) == sorted(by_epoch[1]) == sorted(texts)
        assert (by_epoch[0] != by_epoch[1]) == should_change


# ------------------------------------------------------------------------------- bad input


def test_bad_records_are_skipped_never_empty_rows(tmp_path: Path, tokenizer) -> None:
    good = _corpus(30)
    lines = [json.dumps({"text": t}) for t in good]
    lines[3:3] = ['{"text": ""}', '{"text": 5}', "{not json", '{"other": "x"}', '{"text": "  "}']
    (tmp_path / "t.jsonl").write_text("\n".join(lines) + "\n")
    cfg = _config(tmp_path / "run", tokenizer, train_shards=[str(tmp_path / "t.jsonl")])
    loader = build_train_loader(cfg, tokenizer, tmp_path / "run", sync_passes=True)
    records, _ = drive([loader], epochs=1)
    stream = np.concatenate([r[3] for r in records])
    eot = tokenizer.token_to_id("<|endoftext|>")
    assert not np.any((stream[1:] == eot) & (stream[:-1] == eot)), "an empty document was packed"
    assert loader.skipped == {"empty": 2, "not_string": 1, "invalid_json": 1, "missing_field": 1}
    assert sorted(_doc_ids(stream, tokenizer)) == list(range(4, 30))


def test_worker_error_reaches_the_main_process_as_one_line(tmp_path: Path, tokenizer) -> None:
    (tmp_path / "t.jsonl").write_text("".join(json.dumps({"body": t}) + "\n" for t in _corpus(20)))
    cfg = _config(tmp_path / "run", tokenizer, train_shards=[str(tmp_path / "t.jsonl")],
                  num_workers=1, validation_documents=0)  # fmt: skip
    with pytest.raises(DataSourceError) as err:
        _take(build_train_loader(cfg, tokenizer, tmp_path / "run"), 1)
    assert "text field 'text' not found" in str(err.value)
    assert "Traceback" not in str(err.value) and len(str(err.value).splitlines()) == 1


def test_dying_worker_is_an_error_not_a_hang(tmp_path: Path, tokenizer) -> None:
    cfg = _config(tmp_path / "run", tokenizer, num_workers=2,
                  train_shards=[str(_write_jsonl(tmp_path / "t.jsonl", _corpus(50)))])  # fmt: skip
    it = iter(build_train_loader(cfg, tokenizer, tmp_path / "run"))
    next(it)
    start = time.monotonic()
    # torch's SIGCHLD handler raises at whatever line runs when the signal lands: inside the
    # loader's fetch it becomes our one-line LmstreamError, elsewhere torch's RuntimeError.
    with pytest.raises((LmstreamError, RuntimeError), match="(?i)data ?loader worker"):
        os.kill(multiprocessing.active_children()[0].pid, signal.SIGKILL)
        for _ in range(1000):
            next(it)
    assert time.monotonic() - start < 30
    del it


def test_cpu_run_workers_are_niced_and_send_the_same_batches(tmp_path: Path, tokenizer) -> None:
    """Issue #16, the 2-core CPU pair: a CPU run's loader worker runs at a lower priority than
    training's OpenMP threads, and its rows cross as numpy arrays; the batches are those of the
    in-process loader, token for token."""
    from lmstream.data.loader import CPU_WORKER_NICE

    shards = [str(_write_jsonl(tmp_path / "t.jsonl", _corpus(60)))]
    base = os.getpriority(os.PRIO_PROCESS, 0)
    batches = {}
    for workers in (0, 1):
        cfg = _config(tmp_path / f"run{workers}", tokenizer, num_workers=workers,
                      train_shards=shards, shuffle_buffer_size=8)  # fmt: skip
        cfg.runtime.device = "cpu"
        loader = build_train_loader(cfg, tokenizer, tmp_path / f"run{workers}")
        it = iter(loader)
        batches[workers] = [next(it) for _ in range(12)]
        if workers:
            pid = loader._live._workers[0].pid
            assert os.getpriority(os.PRIO_PROCESS, pid) == min(base + CPU_WORKER_NICE, 19)
        loader.close()
    for a, b in zip(batches[0], batches[1], strict=True):
        assert torch.equal(a.inputs, b.inputs) and torch.equal(a.targets, b.targets)
        assert a.inputs.dtype == b.inputs.dtype == torch.long


def test_vocab_mismatch_is_refused_before_training(tmp_path: Path, tokenizer) -> None:
    cfg = _config(tmp_path / "run", tokenizer,
                  train_shards=[str(_write_jsonl(tmp_path / "t.jsonl", _corpus(10)))])  # fmt: skip
    cfg.model.vocab_size = 50
    with pytest.raises(ConfigError, match="model.vocab_size: 50 is smaller"):
        build_train_loader(cfg, tokenizer, tmp_path / "run")


# ---------------------------------------------------------------------------- token shards


def test_token_shards_round_trip_and_tokenizer_check(tmp_path: Path, tokenizer) -> None:
    texts = _corpus(25)
    manifest = write_token_shards(texts + [""], tokenizer, tmp_path / "tok", shard_tokens=60)
    shards = TokenShards([manifest.parent])
    assert len(shards.arrays) > 1 and shards.arrays[0].dtype == np.uint16
    assert len(shards) == 25  # the empty text is not a document
    for i in (0, 7, 24):
        assert shards.document(i).tolist() == tokenizer.encode(texts[i]).ids
    other = Tokenizer.from_str(tokenizer.to_str())
    other.add_tokens(["zzz-new-token"])
    cfg = _config(tmp_path / "run", other, train_shards=[str(manifest)])
    with pytest.raises(ConfigError, match="different tokenizer"):
        build_train_loader(cfg, other, tmp_path / "run")


def test_max_samples_limits_each_pass_across_workers(tmp_path: Path) -> None:
    texts = _corpus(40)
    spec = SourceSpec.from_files([str(_write_jsonl(tmp_path / "t.jsonl", texts))])
    seen = []
    for g in range(3):
        source = TextSource(spec, "train", worker=g, workers=3, max_samples=20)
        seen += _first_pass(source, g)
    assert sorted(seen) == sorted(texts[:20])
