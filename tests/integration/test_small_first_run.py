"""Issue #18: a small first run trains as written. `lmstream orchestrate --max-samples 800
--model-size tiny` then `lmstream train` used to stop with "data worker 0 got no documents": the
fixed 1,000-document holdout swallowed all 800. The holdout is now sized from --max-samples."""

from __future__ import annotations

import shutil

import pytest
import yaml
from tests.support.training import write_kjv_corpus

from lmstream.cli import main

pytestmark = pytest.mark.slow


def test_orchestrate_800_samples_tiny_then_train(tmp_path, capsys) -> None:
    corpus = write_kjv_corpus(tmp_path, 1000, 300)
    ws = tmp_path / "ws"
    argv = ["orchestrate", "--stream", "--data-files", str(corpus / "train.jsonl"),
            "--max-samples", "800", "--model-size", "tiny", "--vocab-size", "1000",
            "--experiment", "first", "--workspace", str(ws), "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    config = ws / "runs" / "first" / "training.yaml"
    cfg = yaml.safe_load(config.read_text())
    # Only the run's length is cut for CPU; the data section trains as orchestrate wrote it.
    cfg["data"]["gradient_accumulation_steps"] = 1
    cfg["scheduler"].update(total_steps=2, warmup_steps=1)
    cfg["runtime"]["evaluation"]["max_batches"] = 1
    config.write_text(yaml.safe_dump(cfg))
    capsys.readouterr()
    assert main(["train", "--config", str(config)]) == 0, capsys.readouterr().err
    assert "step 2" in capsys.readouterr().out
    # 5% of 800 (40), raised so the holdout holds evaluation's rows in tokens; 3/4 still train
    assert 40 <= cfg["data"]["validation_documents"] <= 800 // 4
    # The old default holdout is refused up front, in one line naming the setting and the size
    # (in a fresh copy of the run folder: this one now holds checkpoints, so a second fresh
    # start in it is refused for another reason).
    fresh = config.parent.with_name("first-again")
    fresh.mkdir()
    for name in ("streaming_config.json", "special_tokens.txt"):
        shutil.copy(config.parent / name, fresh)
    cfg["data"]["validation_documents"] = 1000
    (fresh / "training.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["train", "--config", str(fresh / "training.yaml")]) != 0
    err = capsys.readouterr().err.strip()
    assert "data.validation_documents: 1000 holds out 800 of the source's 800 documents" in err
    assert len(err.splitlines()) == 1
