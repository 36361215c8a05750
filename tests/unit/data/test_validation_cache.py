"""The tokenized validation set's cache is keyed by content too (issue #19, item 12): a
validation file edited in place (same path) must not be served from the stale cache."""

from __future__ import annotations

import json
from pathlib import Path

from lmstream.config import parse_training_config
from lmstream.data.validation import load_validation_set
from lmstream.tokenizer import train_bpe


def _write(path: Path, word: str) -> Path:
    path.write_text("".join(json.dumps({"text": f"{word} {i} {word}"}) + "\n" for i in range(30)))
    return path


def test_validation_file_edited_in_place_is_read_again(tmp_path):
    texts = [f"alpha beta {i} gamma delta" for i in range(50)]
    tok = train_bpe(texts, 300, ["<|endoftext|>", "<|pad|>"])
    tok.save(str(tmp_path / "tokenizer.json"))
    train = _write(tmp_path / "train.jsonl", "alpha")
    val = _write(tmp_path / "val.jsonl", "beta")
    cfg = parse_training_config(
        {
            "model": {"hidden_size": 8, "intermediate_size": 8, "num_layers": 1,
                      "num_attention_heads": 2},
            "tokenizer": {"tokenizer_json": str(tmp_path / "tokenizer.json")},
            "data": {"train_shards": [str(train)], "validation_shards": [str(val)],
                     "batch_size": 2, "sequence_length": 8, "validation_documents": 10},
            "optimizer": {"learning_rate": 1e-3},
            "scheduler": {"total_steps": 10},
        },
        tmp_path,
    )  # fmt: skip
    before = load_validation_set(cfg, tok, tmp_path).tokens
    _write(val, "gamma")  # same path, other documents
    after = load_validation_set(cfg, tok, tmp_path).tokens
    assert "gamma" in tok.decode(after.tolist()) and "beta" not in tok.decode(after.tolist())
    assert "beta" in tok.decode(before.tolist())
