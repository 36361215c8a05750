"""Resume checks all that shapes the data, and every reader verifies (issue #19, items 4-6):
streaming_config.json compared like training.yaml, the whole tokenizer compared, and eval,
generate and export refusing a checkpoint whose bytes no longer match its manifest."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from tests.reliability.support import tiny_config, tree
from tests.support.training import train_in_process, write_run

from lmstream.cli import main as cli_main
from lmstream.train import checkpoint as ckpt


def _one_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if not line.startswith("#")]
    assert len(lines) == 1, lines
    return lines[0]


def _streaming_run(corpus: Path, run_dir: Path, steps: int, **fields) -> Path:
    config = write_run(run_dir, tiny_config(corpus, **{"scheduler.total_steps": steps}))
    sc = {"dataset": str(corpus / "train.jsonl"), "max_samples": 250, **fields}
    (run_dir / "streaming_config.json").write_text(json.dumps(sc))
    return config


@pytest.mark.slow
def test_streaming_config_change_is_refused_on_resume(corpus, tmp_path, capsys):
    """Item 4: another dataset file and another max_samples used to resume silently on other
    data with a second validation set (files mode refuses the same change)."""
    other = tmp_path / "other.jsonl"
    lines = (corpus / "train.jsonl").read_text().splitlines()
    other.write_text("\n".join(reversed(lines)) + "\n")
    run_dir = tmp_path / "run"
    assert train_in_process(_streaming_run(corpus, run_dir, 4)) == 0
    config = _streaming_run(corpus, run_dir, 8, dataset=str(other), max_samples=200)
    before = tree(run_dir)
    capsys.readouterr()
    assert train_in_process(config, "--resume") == 4
    line = _one_line(capsys.readouterr().err)
    assert (
        "the data source changed" in line
        and "dataset:" in line
        and "max_samples: 250 -> 200" in line
    )
    assert tree(run_dir) == before
    # A change that keeps the documents and their order is allowed, and reported.
    config = _streaming_run(corpus, run_dir, 8, stream_batch_size=100)
    assert train_in_process(config, "--resume") == 0
    assert "streaming_config.json stream_batch_size: 1000 -> 100" in capsys.readouterr().out


@pytest.mark.slow
def test_tokenizer_with_another_normalizer_is_refused(corpus, tmp_path, capsys):
    """Item 5: a Lowercase normalizer added to tokenizer.json (every id changes) was accepted
    on resume: only `model` and `added_tokens` were compared."""
    own = tmp_path / "corpus"
    shutil.copytree(corpus, own)
    run_dir = tmp_path / "run"
    config = write_run(run_dir, tiny_config(own, **{"scheduler.total_steps": 4}))
    assert train_in_process(config) == 0
    path = own / "tok" / "tokenizer.json"
    tok = json.loads(path.read_text())
    tok["normalizer"] = {"type": "Lowercase"}
    path.write_text(json.dumps(tok))
    before = tree(run_dir)
    capsys.readouterr()
    assert train_in_process(config, "--resume") == 4
    line = _one_line(capsys.readouterr().err)
    assert "is not the tokenizer" in line and "(normalizer differ)" in line
    assert tree(run_dir) == before


@pytest.fixture
def damaged(reference, tmp_path) -> Path:
    """A copy of the reference run whose newest checkpoint has 4 KB overwritten in
    model.safetensors (same size: only the sha256 tells)."""
    run_dir = tmp_path / "run"
    shutil.copytree(reference, run_dir)
    newest = ckpt.list_checkpoints(run_dir / "checkpoints")[-1]
    with open(newest / ckpt.MODEL_FILE, "r+b") as f:
        f.seek(64 * 1024)
        f.write(bytes(4096))  # zeros: finite weights, other values
    return newest


@pytest.mark.slow
@pytest.mark.parametrize(
    "command",
    [
        ["eval", "--max-batches", "1"],
        ["generate", "--prompt", "And", "--max-new-tokens", "2"],
        ["export", "--out", "OUT"],
    ],
    ids=["eval", "generate", "export"],
)
def test_readers_refuse_a_damaged_checkpoint(damaged, tmp_path, capsys, command):
    """Item 6: eval reported val_loss 7.52 instead of 7.01 with no warning, and export
    succeeded, on a checkpoint that --resume would have skipped."""
    args = [a if a != "OUT" else str(tmp_path / "hf") for a in command]
    previous = ckpt.list_checkpoints(damaged.parent)[-2]
    capsys.readouterr()
    assert cli_main([args[0], "--checkpoint", str(damaged), *args[1:]]) == 4
    line = _one_line(capsys.readouterr().err)
    assert "fails its sha256 check" in line
    assert f"the newest intact checkpoint there is {previous}" in line
    assert not (tmp_path / "hf").exists()
    # --no-verify reads it anyway, and says that it did not check.
    if args[0] != "export":  # (export's logit check may refuse damaged weights on its own)
        assert cli_main([args[0], "--checkpoint", str(damaged), *args[1:], "--no-verify"]) == 0
        assert "--no-verify: the checkpoint's sha256 checks are skipped" in capsys.readouterr().err
