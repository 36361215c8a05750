"""streaming_config.json's ``stream_batch_size`` is the batch size the training loader reads with.

A real streaming run folder (streaming_config.json beside a JSON-lines file), a real byte-level
BPE and the real train loader; the read batch size shows in the saved data position.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer

from lmstream.config import StreamingConfig, dump_streaming_config, parse_training_config
from lmstream.data.documents import TextSource, resolve_plan
from lmstream.data.loader import build_train_loader
from lmstream.tokenizer import train_bpe

TEXTS = [f"doc{i:04d} " + " ".join(["river", "stone", "light"][: 1 + i % 3]) for i in range(40)]


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return train_bpe(TEXTS, 300, ["<|endoftext|>", "<|pad|>"])


def _run(tmp_path: Path, tokenizer: Tokenizer, **streaming):
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    run = tmp_path / "run"
    run.mkdir()
    sc = StreamingConfig(dataset=str(data), **streaming)
    dump_streaming_config(sc, run / "streaming_config.json")
    tokenizer.save(str(run / "tokenizer.json"))
    cfg = parse_training_config(
        {
            "model": {"hidden_size": 8, "intermediate_size": 8, "num_layers": 1,
                      "num_attention_heads": 2},
            "tokenizer": {"tokenizer_json": str(run / "tokenizer.json")},
            "data": {"batch_size": 2, "sequence_length": 16, "validation_documents": 4,
                     "num_workers": 0},
            "optimizer": {"learning_rate": 1e-3},
            "scheduler": {"total_steps": 10},
        },
        run,
    )  # fmt: skip
    return cfg, run


def _stream_states(state) -> list[dict]:
    """Every DocumentStream state (a dict with "source", "offset", "batch_size") inside ``state``."""
    if isinstance(state, dict):
        found = [state] if {"source", "offset", "batch_size"} <= state.keys() else []
        return found + [s for v in state.values() for s in _stream_states(v)]
    if isinstance(state, list | tuple):
        return [s for v in state for s in _stream_states(v)]
    return []


def test_text_source_reads_with_the_configured_batch_size(tmp_path, tokenizer):
    cfg, run = _run(tmp_path, tokenizer, stream_batch_size=7)
    plan = resolve_plan(cfg, run)
    source = TextSource(plan.spec, plan.split)
    source.open(0, None)
    assert source.state()["batch_size"] == 7
    source.read(10)
    assert source.state()["batch_size"] == 7 and source.state()["offset"] == 3


def test_train_loader_position_uses_the_configured_batch_size(tmp_path, tokenizer):
    cfg, run = _run(tmp_path, tokenizer, stream_batch_size=5)
    loader = build_train_loader(cfg, tokenizer, run)
    it = iter(loader)
    full = [next(it) for _ in range(8)]
    del it
    loader = build_train_loader(cfg, tokenizer, run)
    it = iter(loader)
    first = [next(it) for _ in range(3)]
    state = loader.state_dict()
    del it
    streams = _stream_states(state)
    assert streams and {s["batch_size"] for s in streams} == {5}
    resumed = build_train_loader(cfg, tokenizer, run)
    resumed.load_state_dict(state)
    it = iter(resumed)
    rest = [next(it) for _ in range(5)]
    del it
    rows = [torch.cat([b.inputs, b.targets[:, -1:]], dim=1).numpy() for b in first + rest]
    want = [torch.cat([b.inputs, b.targets[:, -1:]], dim=1).numpy() for b in full]
    assert np.array_equal(np.concatenate(rows), np.concatenate(want))
