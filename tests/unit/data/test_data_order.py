"""Data order you can trust (issue #20), traced document by document.

Every test document starts with its id (``doc-00017 ...``); the loader's token rows are decoded
back to ids (tests/support/doc_trace.py) and compared with what an epoch, ``max_samples`` and
the holdout promise: with 0, 2 and 4 workers, 1 and 2 ranks (loaders built per rank in this
process, driven in lockstep as the training loop does), uneven files, parquet row groups and
.jsonl.gz.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from tests.support.doc_trace import (
    docs,
    drive,
    ids_of,
    record_tokenizer_input,
    trained_ids,
    write_jsonl,
    write_uneven,
)
from tokenizers import Tokenizer

from lmstream.config import (
    StreamingConfig,
    dump_streaming_config,
    load_training_config,
    parse_training_config,
)
from lmstream.data.loader import build_train_loader
from lmstream.data.validation import load_validation_set
from lmstream.errors import ConfigError
from lmstream.tokenizer import train_bpe


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return train_bpe(docs(400), 400, ["<|endoftext|>", "<|pad|>"])


def _config(run_dir: Path, tokenizer: Tokenizer, **data):
    run_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(run_dir / "tokenizer.json"))
    data = {"batch_size": 4, "sequence_length": 32, "shuffle_buffer_size": 16, **data}
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


def _loaders(cfg, tokenizer, run: Path, world: int) -> list:
    return [
        build_train_loader(cfg, tokenizer, run, rank=r, world_size=world, sync_passes=True)
        for r in range(world)
    ]


def _held_out(cfg, tokenizer, run: Path) -> list[int]:
    return ids_of(load_validation_set(cfg, tokenizer, run).tokens, tokenizer)


CASES = [  # (file kind, documents per file, ranks, workers per rank)
    ("jsonl", [10, 290], 1, 0),
    ("jsonl", [10, 290], 1, 2),
    ("parquet", [130, 90, 110, 70], 1, 4),
    ("jsonl.gz", [130, 90, 110, 70], 2, 2),
    ("parquet", [10, 290], 2, 0),
]


@pytest.mark.parametrize(("kind", "sizes", "world", "workers"), CASES)
def test_each_epoch_trains_the_whole_pass_once(tmp_path, tokenizer, kind, sizes, world, workers):
    paths, texts = write_uneven(tmp_path / "data", sizes, kind)
    run = tmp_path / "run"
    cfg = _config(run, tokenizer, train_shards=paths, num_workers=workers, validation_documents=5)
    assert _held_out(cfg, tokenizer, run) == list(range(5))
    records, _ = drive(_loaders(cfg, tokenizer, run, world), epochs=2, accum=2)
    trained = trained_ids(records, tokenizer)
    for epoch in (0, 1):
        assert trained[epoch] == Counter(range(5, len(texts))), f"epoch {epoch}"


def test_a_source_too_small_for_the_workers_is_refused(tmp_path, tokenizer) -> None:
    run = tmp_path / "run"
    data = write_jsonl(tmp_path / "t.jsonl", docs(3))
    cfg = _config(run, tokenizer, train_shards=[data], num_workers=2, validation_documents=0)
    with pytest.raises(ConfigError, match=r"data.num_workers: the source has 3 documents.* 4 data"):
        build_train_loader(cfg, tokenizer, run, rank=0, world_size=2)
    data = write_jsonl(tmp_path / "u.jsonl", docs(6))
    cfg = _config(run, tokenizer, train_shards=[data], num_workers=2, validation_documents=5)
    with pytest.raises(ConfigError) as err:
        build_train_loader(cfg, tokenizer, run)
    assert str(err.value).startswith("data.validation_documents: 5 holds out 5 of the source's 6")
    assert len(str(err.value).splitlines()) == 1


def _messy_source(folder: Path) -> tuple[list[str], list[int]]:
    """Two uneven jsonl files with bad records and over-long documents among the good ones;
    returns (files, ids of the clean documents in source order)."""
    folder.mkdir(parents=True, exist_ok=True)
    texts = docs(300)
    clean, files = [], []
    for k, part in enumerate((texts[:40], texts[40:])):
        lines = []
        for text in part:
            i = int(text[4:9])
            if i % 17 == 3:
                lines.append('{"text": 5}')  # a bad record in place of this document
            elif i % 23 == 5:
                lines.append(json.dumps({"text": f"doc-{i:05d} " + "sea " * 120}))  # too long
            else:
                lines.append(json.dumps({"text": text}))
                clean.append(i)
        path = folder / f"part-{k}.jsonl"
        path.write_text("\n".join(lines) + "\n")
        files.append(str(path))
    return files, clean


@pytest.mark.parametrize(("world", "workers"), [(1, 0), (1, 2), (2, 2)])
def test_max_samples_is_a_prefix_of_clean_documents(tmp_path, tokenizer, world, workers):
    files, clean = _messy_source(tmp_path / "data")
    run = tmp_path / "run"
    run.mkdir()
    dump_streaming_config(
        StreamingConfig(dataset=files[0], data_files=files, max_samples=120, max_chars=300),
        run / "streaming_config.json",
    )
    cfg = _config(run, tokenizer, num_workers=workers, validation_documents=6)
    held_out = _held_out(cfg, tokenizer, run)
    assert held_out == clean[:6], "the holdout is the first documents of the N"
    records, _ = drive(_loaders(cfg, tokenizer, run, world), epochs=1)
    assert trained_ids(records, tokenizer)[0] == Counter(clean[6:120])


def test_orchestrate_and_training_see_the_same_documents(tmp_path, tokenizer, monkeypatch):
    """The tokenizer's documents (--max-samples, --max-chars, bad records skipped) are the
    holdout plus one epoch of training, with the holdout sized from --max-samples."""
    import lmstream.orchestrate as orch

    files, clean = _messy_source(tmp_path / "data")
    seen = record_tokenizer_input(monkeypatch)
    result = orch.orchestrate(
        orch.OrchestrateOptions(
            experiment="order", workspace=str(tmp_path / "ws"), stream=True, data_files=files,
            max_samples=200, max_chars=300, vocab_size=400, model_size="tiny", progress=False,
        )
    )  # fmt: skip
    tokenizer_ids = [int(t[4:9]) for t in seen]
    assert tokenizer_ids == clean[:200]
    cfg = load_training_config(result.paths.training_yaml)
    # 5% of --max-samples (10), raised so the short documents hold evaluation's rows in tokens
    held = cfg.data.validation_documents
    assert 10 <= held <= 200 // 4
    cfg.data.num_workers, cfg.data.sequence_length = 2, 32
    run = result.paths.run_dir
    tok = Tokenizer.from_file(str(result.paths.tokenizer_json))
    held_out = _held_out(cfg, tok, run)
    records, _ = drive(_loaders(cfg, tok, run, 2), epochs=1)
    trained = trained_ids(records, tok)[0]
    assert held_out == tokenizer_ids[:held]
    assert trained == Counter(tokenizer_ids[held:])


def _roundtrip(state: dict) -> dict:
    """Through torch.save / torch.load(weights_only=True), as the checkpoint stores it."""
    import io

    import torch

    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["jsonl", "parquet"])
def test_exact_resume_in_a_pass_and_in_its_idle_tail(tmp_path, tokenizer, kind) -> None:
    """2 ranks x 2 workers, uneven files, shuffled: stopping anywhere (mid-pass, while one rank
    idles waiting for the other, right at an epoch's end) and resuming in fresh loaders gives
    the uninterrupted run's batches, token for token."""
    paths, _ = write_uneven(tmp_path / "data", [10, 90], kind)
    run = tmp_path / "run"
    cfg = _config(run, tokenizer, train_shards=paths, num_workers=2, validation_documents=4)
    full, _ = drive(_loaders(cfg, tokenizer, run, 2), epochs=2)
    steps = [full[i : i + 2] for i in range(0, len(full), 2)]
    tail = next(i for i, s in enumerate(steps) if {r[4] for r in s} == {0.0, 1.0})
    end = next(i for i, s in enumerate(steps) if {r[4] for r in s} == {0.0})
    cuts = sorted({3, tail + 1, end + 1})  # steps after which the run stops and resumes
    got, states, epoch, done = [], None, 0, 0
    for stop in [*cuts, None]:
        loaders = _loaders(cfg, tokenizer, run, 2)
        for loader, state in zip(loaders, states or [None, None], strict=True):
            if state is not None:
                loader.load_state_dict(state)
        part, epoch = drive(
            loaders, epochs=2, start_epoch=epoch, max_steps=None if stop is None else stop - done
        )
        got += part
        done = stop or 0
        states = [_roundtrip(loader.state_dict()) for loader in loaders]
    assert len(got) == len(full)
    for a, b in zip(got, full, strict=True):
        assert a[:3] == b[:3] and a[4] == b[4] and (a[3] == b[3]).all()
