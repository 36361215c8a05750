"""`lmstream demo` end to end with a short budget (the README's first command), then `lmstream
eval` and `lmstream plot` on what it made."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lmstream.cli import main

pytestmark = pytest.mark.slow
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> tuple[Path, str]:
    ws = tmp_path_factory.mktemp("ws")
    env = dict(os.environ, HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1")
    # Half a minute leaves nothing after orchestrate and the reserve, so the plan takes its
    # minimum (10 s of steps, at least 40): the run's length no longer grows with a faster
    # machine, and 40 steps learn enough (validation loss 8.4 -> 5.4 measured on 2 cores).
    proc = subprocess.run(
        [sys.executable, "-m", "lmstream", "demo", "--workspace", str(ws), "--minutes", "0.5"],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return ws, proc.stdout


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_demo_makes_everything_and_learns(demo) -> None:
    ws, out = demo
    tok = ws / "artifacts/tokenizer/demo"
    run = ws / "runs/demo"
    for name in ("tokenizer.json", "vocab.json", "merges.txt"):
        assert (tok / name).stat().st_size > 0
    for name in ("streaming_config.json", "special_tokens.txt", "training.yaml", "metrics.jsonl"):
        assert (run / name).is_file(), name
    assert any((run / "checkpoints").glob("step-*/manifest.json"))
    assert any((run / "best").glob("step-*/manifest.json"))
    assert list((run / "tensorboard").rglob("events.out.tfevents.*"))
    assert (run / "curves.png").read_bytes()[:8] == PNG_MAGIC

    records = _records(run / "metrics.jsonl")
    first_loss = next(r["loss"] for r in records if "loss" in r)
    val = [r["val_loss"] for r in records if "val_loss" in r]
    assert val and val[-1] < first_loss - 1.5, (first_loss, val)

    # the sample decodes to text after the prompt, and the summary points at the next commands
    sample = out.split("$ lmstream generate", 1)[1].split("$ lmstream plot", 1)[0]
    lines = [line for line in sample.splitlines() if line.startswith("And God said")]
    assert lines and len(lines[0]) > len("And God said") + 3, sample
    assert "== lmstream demo: done" in out and "lmstream train --config" in out


def test_eval_reproduces_the_logged_validation_loss(demo, capsys) -> None:
    ws, _ = demo
    run = ws / "runs/demo"
    assert main(["eval", "--checkpoint", str(run / "checkpoints"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    logged = [r for r in _records(run / "metrics.jsonl") if "val_loss" in r][-1]
    assert Path(result["checkpoint"]).name == f"step-{logged['step']:08d}"
    assert result["val_loss"] == pytest.approx(logged["val_loss"], rel=1e-5)
    assert result["val_ppl"] == pytest.approx(logged["val_ppl"], rel=1e-4)


def test_eval_on_given_files(demo, capsys, tmp_path: Path) -> None:
    ws, _ = demo
    held_out = tmp_path / "other.txt"
    held_out.write_text(
        "\n".join(f"And the LORD spake unto Moses, saying {i}." for i in range(300))
    )
    code = main(["eval", "--checkpoint", str(ws / "runs/demo/best"), "--data", str(held_out),
                 "--max-batches", "2", "--documents", "300", "--json"])  # fmt: skip
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert 0 < result["val_loss"] < 9 and result["batches"] == 2


def test_eval_errors_are_clear(tmp_path: Path, capsys) -> None:
    assert main(["eval", "--checkpoint", str(tmp_path)]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(tmp_path) in err[0]
    with pytest.raises(SystemExit) as info:
        main(["eval", "--checkpoint", str(tmp_path), "--max-batches", "0"])
    assert info.value.code == 2
