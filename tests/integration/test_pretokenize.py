"""`lmstream orchestrate --pretokenize`: token shards that training reads by memory map hold
exactly the tokenizer's encoding of the source documents, and a run trains from them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from tokenizers import Tokenizer

from lmstream.cli import main
from lmstream.config import load_training_config
from lmstream.data.token_shards import TokenShards


def _corpus(path: Path, n: int, offset: int = 0) -> list[str]:
    texts = [
        f"Document {i + offset}: the quick brown fox number {i * 7 % 13} jumps." for i in range(n)
    ]
    texts.insert(3, "")  # a bad record: skipped, never a token
    path.write_text("\n".join(json.dumps({"text": t}) for t in texts) + "\n")
    return [t for t in texts if t]


@pytest.mark.slow
def test_pretokenized_shards_match_the_tokenizer_and_train(tmp_path: Path, capsys) -> None:
    train = _corpus(tmp_path / "train.jsonl", 300)
    valid = _corpus(tmp_path / "valid.jsonl", 80, offset=1000)
    ws = tmp_path / "ws"
    code = main([
        "orchestrate", "--data-files", f"train={tmp_path / 'train.jsonl'}",
        f"validation={tmp_path / 'valid.jsonl'}", "--validation-split", "validation",
        "--vocab-size", "400", "--model-size", "tiny", "--experiment", "pt",
        "--workspace", str(ws), "--pretokenize", "--no-progress",
    ])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    run = ws / "runs/pt"
    cfg = load_training_config(run / "training.yaml")
    assert cfg.data.train_shards == [str(ws / "artifacts/tokens/pt/train")]
    assert not (run / "streaming_config.json").exists()

    tok = Tokenizer.from_file(str(ws / "artifacts/tokenizer/pt/tokenizer.json"))
    for folder, texts in (("train", train), ("validation", valid)):
        shards = TokenShards([str(ws / "artifacts/tokens/pt" / folder)])
        assert len(shards) == len(texts)
        for i in (0, 3, len(texts) - 1):
            assert np.asarray(shards.document(i)).tolist() == tok.encode(texts[i]).ids

    data = yaml.safe_load((run / "training.yaml").read_text())
    data["model"].update(
        hidden_size=32,
        intermediate_size=64,
        num_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
    )
    data["data"].update(
        batch_size=4,
        gradient_accumulation_steps=1,
        sequence_length=16,
        num_workers=0,
        validation_documents=40,
    )
    data["scheduler"].update(warmup_steps=1, total_steps=4)
    data["runtime"]["evaluation"].update(every_n_steps=4, max_batches=2)
    (run / "training.yaml").write_text(yaml.safe_dump(data))
    assert main(["train", "--config", str(run / "training.yaml")]) == 0
    assert (run / "checkpoints/step-00000004/manifest.json").is_file()


def test_pretokenize_with_stream_is_refused(tmp_path: Path, capsys) -> None:
    _corpus(tmp_path / "train.jsonl", 10)
    code = main(["orchestrate", "--stream", "--dataset", str(tmp_path / "train.jsonl"),
                 "--experiment", "x", "--workspace", str(tmp_path / "ws"), "--pretokenize"])  # fmt: skip
    assert code == 2
    assert "--pretokenize" in capsys.readouterr().err
    assert not (tmp_path / "ws/runs/x").exists()
