"""What `lmstream train` says to a newcomer (issue #22): the dry-run's device, data, holdout and
time estimate with steps numbered as training numbers them; the start-of-run data line; the
end-of-run summary; throughput without evaluation time; the real paths in the stop and "not
found" messages; a warning for a model far too large for a CPU; files written with the umask."""

from __future__ import annotations

import json
import math
import os
import re
import select
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from tests.integration.test_train import (
    corpus,  # noqa: F401 (fixture)
    start_subprocess,
    tiny_config,
    wait_for_step,
)
from tests.support.training import train_in_process, write_run

from lmstream.cli import main as cli_main
from lmstream.config import load_training_config

pytestmark = pytest.mark.slow


def _first_line_starting(proc: subprocess.Popen, prefix: str, timeout: float) -> str:
    """The first line of ``proc``'s output starting with ``prefix``, or "" at the timeout (or
    at the end of its output); never blocks past the timeout on a silent process."""
    deadline = time.monotonic() + timeout
    buffered = ""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], max(deadline - time.monotonic(), 0))
        if not ready:
            break
        chunk = os.read(proc.stdout.fileno(), 4096).decode(errors="replace")
        if not chunk:
            break
        buffered += chunk
        for line in buffered.splitlines():
            if line.startswith(prefix):
                return line
    return ""


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_dry_run_then_train_say_what_happens(corpus, tmp_path, capsys):  # noqa: F811
    run_dir = tmp_path / "run"
    config = write_run(
        run_dir,
        tiny_config(
            corpus, **{"scheduler.total_steps": 6, "scheduler.warmup_steps": 3,
                       "runtime.checkpoint.every_n_steps": 3},
        ),
    )  # fmt: skip
    assert cli_main(["train", "--config", str(config), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "device: cpu" in out and "time estimate: ~" in out
    data = next(line for line in out.splitlines() if line.startswith("data: "))
    assert str(corpus / "train.jsonl") in data and "max_samples none" in data
    # 400 documents, 20 held out: the holdout's share and the epochs the plan implies.
    assert "the first 20 documents held out of training (5% of the data)" in data
    assert "in 380 documents" in data and "epochs" in data
    lr_line = next(line for line in out.splitlines() if line.startswith("lr at step: "))
    points = dict(p.split(": ") for p in lr_line.removeprefix("lr at step: ").split(", "))
    assert "0" not in points and set(points) >= {"1", "3", "4", "6"}

    mask = os.umask(0o022)
    try:
        assert train_in_process(config) == 0
    finally:
        os.umask(mask)
    out = capsys.readouterr().out
    logged = {r["step"]: r["lr"] for r in _records(run_dir) if "lr" in r}
    # The dry-run's step k is the step training logs as k.
    for step in (1, 3, 4, 6):
        assert f"{logged[step]:.3g}" == points[str(step)], step
    assert any(
        line.startswith("data: ") and "tokens available" in line for line in out.splitlines()
    )
    summary = out[out.index("== done: step 6 of 6") :]
    checkpoints = run_dir / "checkpoints"
    assert "loss: " in summary and "tokens seen: " in summary
    assert f"lmstream generate --checkpoint {checkpoints}" in summary
    assert f"lmstream train --config {config} --resume" in summary
    # safetensors writes 0600 on its own; the user's umask decides.
    model = next(checkpoints.glob("step-*/model.safetensors"))
    assert model.stat().st_mode & 0o777 == 0o644


def test_a_short_source_and_a_large_holdout_are_reported(corpus, tmp_path, capsys):  # noqa: F811
    ws = tmp_path / "ws"
    assert (
        cli_main(
            [
                "orchestrate",
                "--no-progress",
                "--stream",
                "--dataset",
                str(corpus / "train.jsonl"),
                "--max-samples",
                "40",
                "--vocab-size",
                "300",
                "--experiment",
                "s",
                "--workspace",
                str(ws),
                "--model-size",
                "tiny",
            ]
        )  # fmt: skip
        == 0
    )
    path = ws / "runs" / "s" / "training.yaml"
    data = yaml.safe_load(path.read_text())
    data["data"]["validation_documents"] = 20
    path.write_text(yaml.safe_dump(data))
    capsys.readouterr()
    assert cli_main(["train", "--config", str(path), "--dry-run"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("data: "))
    assert "max_samples 40" in line and "(50% of the data, a large share" in line
    epochs = float(re.search(r"= ([\d.]+) epochs", line).group(1))
    passes = math.ceil(epochs)  # e.g. 20.12 epochs: the 21st pass is cut short
    assert f"epochs ({passes} passes over the data, the last one partial)" in line, line


def test_throughput_leaves_evaluation_time_out(corpus, tmp_path):  # noqa: F811
    # Evaluation here costs ~20 training steps (150 validation batches against 2 micro-batches).
    run_dir = tmp_path / "run"
    config = write_run(
        run_dir,
        tiny_config(
            corpus, **{"scheduler.total_steps": 16, "data.validation_documents": 120,
                       "runtime.evaluation.every_n_steps": 4, "runtime.evaluation.max_batches": 150,
                       "runtime.checkpoint.every_n_steps": 100},
        ),
    )  # fmt: skip
    assert train_in_process(config) == 0
    rows = {r["step"]: r for r in _records(run_dir) if "tokens_per_s" in r}
    after_eval = [rows[s]["tokens_per_s"] for s in (5, 9, 13)]
    others = [rows[s]["tokens_per_s"] for s in rows if s not in (1, 5, 9, 13)]
    # Counted in, the evaluation made these ~1/20 of the others; steps of a few ms vary several
    # fold on a shared machine, hence the wide margin.
    assert min(after_eval) > 0.1 * statistics.median(others), (after_eval, others)
    assert all(rows[s]["eval_checkpoint_s"] > 0 for s in (5, 9, 13))


def test_ctrl_c_names_the_real_command(corpus, tmp_path):  # noqa: F811
    run_dir = tmp_path / "run"
    config = write_run(run_dir, tiny_config(corpus, **{"scheduler.total_steps": 100000}))
    proc = start_subprocess(config)
    try:
        wait_for_step(run_dir, proc, 3)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, out
    assert f"Continue with `lmstream train --config {config} --resume`" in out
    assert str(run_dir / "checkpoints") in out
    assert "== stopped: step " in out  # the summary, not a "done"


def test_not_found_messages_name_the_path_and_the_next_command(corpus, tmp_path, capsys):  # noqa: F811
    missing = tmp_path / "runs" / "e" / "training.yaml"
    assert cli_main(["train", "--config", str(missing)]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "lmstream orchestrate --experiment" in err
    config = write_run(
        tmp_path / "run",
        tiny_config(corpus, **{"tokenizer.tokenizer_json": str(tmp_path / "nope.json")}),
    )
    assert cli_main(["train", "--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert str(tmp_path / "nope.json") in err and "lmstream orchestrate" in err
    assert str(config) in err


def test_a_model_too_large_for_the_cpu_is_announced_at_start(corpus, tmp_path, monkeypatch):  # noqa: F811
    # A step of 10 million micro-batches: hours per step on a CPU, with a model small enough
    # that the test never allocates much (the 1b preset's 16 GB would not fit beside others).
    cfg = tiny_config(corpus, **{"data.gradient_accumulation_steps": 10_000_000})
    config = write_run(tmp_path / "run", cfg)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "lmstream", "train", "--config", str(config)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        line = _first_line_starting(proc, "warning:", timeout=60)
    finally:
        proc.kill()
        proc.communicate()
    assert line.startswith("warning: on this CPU one optimizer step"), line
    assert "--model-size tiny" in line
    # A model sized for a CPU gets no warning.
    from lmstream.train import report

    small = load_training_config(write_run(tmp_path / "small", tiny_config(corpus)))
    timed = []  # and times no matmul for it: fast on any CPU (issue #16, start-up of small runs)
    monkeypatch.setattr(report, "measure_matmul_flops", lambda *a, **k: timed.append(1) or 1e11)
    assert report.slow_cpu_warning(small, 400) is None and not timed
