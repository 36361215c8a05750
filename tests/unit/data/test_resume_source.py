"""A resume must read the same documents as the run it continues (issue #20).

Since ``--max-chars`` and ``max_samples`` shape the pass in training (streaming_config.json),
re-running orchestrate with other values between a checkpoint and ``--resume`` changes which
documents the saved positions point at, and which documents the holdout is: a resume would go
on silently with another pass (and could train on documents that were held out). The data
state records the source's settings and a resume with changed ones is refused in one line.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.support.doc_trace import docs, drive, write_jsonl
from tokenizers import Tokenizer

from lmstream.config import StreamingConfig, dump_streaming_config, parse_training_config
from lmstream.data.loader import build_train_loader
from lmstream.errors import CheckpointError
from lmstream.tokenizer import train_bpe


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return train_bpe(docs(200), 300, ["<|endoftext|>", "<|pad|>"])


def _loader(run: Path, tokenizer: Tokenizer, **streaming):
    dump_streaming_config(StreamingConfig(**streaming), run / "streaming_config.json")
    cfg = parse_training_config(
        {
            "model": {"hidden_size": 8, "intermediate_size": 8, "num_layers": 1,
                      "num_attention_heads": 2},
            "tokenizer": {"tokenizer_json": str(run / "tokenizer.json")},
            "data": {"batch_size": 2, "sequence_length": 16, "shuffle_buffer_size": 8,
                     "num_workers": 2, "validation_documents": 4},
            "optimizer": {"learning_rate": 1e-3},
            "scheduler": {"total_steps": 10},
        },
        run,
    )  # fmt: skip
    return build_train_loader(cfg, tokenizer, run, sync_passes=True)


@pytest.mark.parametrize(("field", "changed"), [("max_chars", 150), ("max_samples", 90)])
def test_resume_with_a_changed_source_is_refused(tmp_path, tokenizer, field, changed):
    run = tmp_path / "run"
    run.mkdir()
    tokenizer.save(str(run / "tokenizer.json"))
    texts = docs(120)
    data = write_jsonl(tmp_path / "t.jsonl", texts)
    source = {"dataset": data, "data_files": [data], "max_samples": 100, "max_chars": 400}
    loader = _loader(run, tokenizer, **source)
    drive([loader], epochs=1, max_steps=3)
    state = loader.state_dict()
    loader.close()

    same = _loader(run, tokenizer, **source, stream_batch_size=7)  # how it reads: no matter
    same.load_state_dict(state)
    other = _loader(run, tokenizer, **{**source, field: changed})
    with pytest.raises(CheckpointError) as err:
        other.load_state_dict(state)
    message = str(err.value)
    assert f"{field}: " in message and len(message.splitlines()) == 1, message


def test_a_data_state_of_an_older_lmstream_is_refused_for_what_it_is(tmp_path, tokenizer):
    """A checkpoint written before epochs became whole passes (data state version 1) cannot
    resume exactly: the message says so, instead of asking to restore ranks, workers, window and
    seed that did not change (the advice it gave before)."""
    run = tmp_path / "run"
    run.mkdir()
    tokenizer.save(str(run / "tokenizer.json"))
    data = write_jsonl(tmp_path / "t.jsonl", docs(60))
    loader = _loader(run, tokenizer, dataset=data, data_files=[data])
    state = {**loader.state_dict(), "version": 1}
    loader.close()  # the state started its workers (see the test below)
    with pytest.raises(CheckpointError) as err:
        _loader(run, tokenizer, dataset=data, data_files=[data]).load_state_dict(state)
    message = str(err.value)
    assert "version 1" in message and "older lmstream" in message, message
    assert "data.num_workers" not in message and len(message.splitlines()) == 1


def test_close_stops_the_workers_a_state_dict_started(tmp_path, tokenizer):
    """Asking a loader that has not been iterated for its state starts its worker processes
    (torchdata's loader builds its iterator to answer); close() must stop those too, or they
    outlive the run (a checkpoint saved before the first batch left 2 workers behind)."""
    import multiprocessing

    run = tmp_path / "run"
    run.mkdir()
    tokenizer.save(str(run / "tokenizer.json"))
    data = write_jsonl(tmp_path / "t.jsonl", docs(60))
    before = set(multiprocessing.active_children())
    loader = _loader(run, tokenizer, dataset=data, data_files=[data])
    loader.state_dict()
    assert set(multiprocessing.active_children()) - before, "expected the state to start workers"
    loader.close()
    left = [p for p in set(multiprocessing.active_children()) - before if p.is_alive()]
    assert not left, f"workers left running after close(): {left}"
