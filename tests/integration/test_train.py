"""`lmstream train` end to end on a tiny model and a tiny local corpus, through the CLI.

Exact resume is checked the strict way: an uninterrupted reference run, then runs stopped
plainly, by SIGTERM and by SIGKILL (real subprocesses) and resumed; the final weights must be
bit-identical and the loss at every step the same. Runs use one intra-op thread (the same in
every process) so CPU fp32 arithmetic is deterministic across processes.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tests.support.training import (
    tiny_training_config,
    train_in_process,
    write_kjv_corpus,
    write_run,
)

from lmstream.cli import main as cli_main
from lmstream.train import checkpoint as ck
from lmstream.train.precision import cpu_has_fast_bf16

pytestmark = pytest.mark.slow
TOTAL = 60


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """400 KJV paragraphs as JSON lines and a 400-token BPE trained on them."""
    return write_kjv_corpus(tmp_path_factory.mktemp("corpus"), 400, 400)


def tiny_config(corpus: Path, **overrides) -> dict:
    """The shared tiny run with dropout, accumulation, periodic checkpoints and evaluations,
    and TensorBoard (the sections given whole here keep the schema's other defaults)."""
    return tiny_training_config(corpus, TOTAL, **{
        "model.residual_dropout": 0.1,  # dropout draws from the RNG: its state must resume too
        "data.gradient_accumulation_steps": 2,
        "data.validation_documents": 20,
        "data.shuffle_buffer_size": 64,
        "optimizer.weight_decay": 0.1,
        "scheduler.warmup_steps": 5,
        "runtime.device": "auto",
        "runtime.checkpoint": {"every_n_steps": 5, "max_keep": 2},
        "runtime.evaluation": {"every_n_steps": 20, "max_batches": 4, "best": {"max_keep": 2}},
        "runtime.logging": {"tensorboard": "tb", "enable_stdout": True},
        **overrides,
    })  # fmt: skip


def start_subprocess(config: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "lmstream", "train", "--config", str(config)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def losses(run_dir: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if "loss" in r}


def wait_for_step(run_dir: Path, proc: subprocess.Popen, step: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"run ended early:\n{proc.stdout.read()}"
        path = run_dir / "metrics.jsonl"
        if path.exists() and any(s >= step for s in _steps(path)):
            return
        time.sleep(0.01)
    raise AssertionError(f"step {step} not reached in {timeout}s")


def _steps(path: Path) -> list[int]:
    out = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError, KeyError):
            out.append(json.loads(line)["step"])
    return out


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "checkpoints" / f"step-{TOTAL:08d}" / "model.safetensors"))


def assert_same_run(run_dir: Path, reference: Path) -> None:
    got, want = losses(run_dir), losses(reference)
    assert sorted(got) == list(range(1, TOTAL + 1))
    assert got == want  # the same loss, bit for bit, at every step
    a, b = final_weights(run_dir), final_weights(reference)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def reference(corpus, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("reference")
    assert train_in_process(write_run(run_dir, tiny_config(corpus))) == 0
    return run_dir


def test_training_learns_and_writes_everything(reference):
    steps = losses(reference)
    first, last = steps[1], sum(steps[s] for s in range(TOTAL - 4, TOTAL + 1)) / 5
    assert last < first - 1.0, (first, last)  # from ~ln(400) = 6.0 to well below
    # rotation: exactly max_keep newest checkpoints
    kept = sorted(p.name for p in (reference / "checkpoints").iterdir())
    assert kept == [f"step-{TOTAL - 5:08d}", f"step-{TOTAL:08d}"]
    # best: the max_keep lowest validation losses among the evaluations (steps 20, 40, 60)
    records = [json.loads(x) for x in (reference / "metrics.jsonl").read_text().splitlines()]
    vals = {r["step"]: r["val_loss"] for r in records if "val_loss" in r}
    assert sorted(vals) == [20, 40, 60]
    best = sorted(vals, key=vals.get)[:2]
    assert sorted(p.name for p in (reference / "best").iterdir()) == sorted(
        f"step-{s:08d}" for s in best
    )
    # the final step was saved and evaluated (and, still learning, is among the best): its best
    # copy is hard links to the regular checkpoint's files (written once), and both verify
    assert TOTAL in best
    name = f"step-{TOTAL:08d}/model.safetensors"
    linked = (reference / "best" / name).stat()
    assert linked.st_ino == (reference / "checkpoints" / name).stat().st_ino
    ck.verify_checkpoint(reference / "best" / f"step-{TOTAL:08d}")
    # logs: jsonl fields and TensorBoard events read back with tensorboard's reader
    assert {"loss", "lr", "grad_norm", "tokens_per_s", "data_wait_s", "memory_gb"} <= set(
        records[0]
    )
    acc = EventAccumulator(str(reference / "tb"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("train/loss")] == list(range(1, TOTAL + 1))
    assert [e.step for e in acc.Scalars("val/loss")] == [20, 40, 60]


def test_plain_stop_and_resume_is_bit_exact(corpus, tmp_path, capsys):
    # A constant schedule after warmup, so a run asked for 23 steps is the uninterrupted run's
    # first 23 steps; resuming it with total_steps 60 (an allowed change) must then match.
    constant = {"scheduler.strategy": "constant_with_warmup"}
    full_dir, run_dir = tmp_path / "full", tmp_path / "run"
    assert train_in_process(write_run(full_dir, tiny_config(corpus, **constant))) == 0
    short = tiny_config(corpus, **constant, **{"scheduler.total_steps": 23})
    assert train_in_process(write_run(run_dir, short)) == 0
    assert max(losses(run_dir)) == 23
    assert train_in_process(write_run(run_dir, tiny_config(corpus, **constant)), "--resume") == 0
    out = capsys.readouterr().out
    assert "resumed from" in out and "scheduler.total_steps: 23 -> 60" in out
    assert_same_run(run_dir, full_dir)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_interrupted_run_resumes_bit_exact(corpus, reference, tmp_path, sig):
    run_dir = tmp_path / "run"
    config = write_run(run_dir, tiny_config(corpus))
    proc = start_subprocess(config)
    try:
        wait_for_step(run_dir, proc, 12)
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    saved = sorted(p.name for p in (run_dir / "checkpoints").iterdir() if p.name.startswith("step"))
    assert saved and saved[-1] < f"step-{TOTAL:08d}", "the run finished before the signal"
    if sig == signal.SIGTERM:
        assert proc.returncode == 0, out
        assert "stopped by SIGTERM" in out
    else:
        assert proc.returncode == -signal.SIGKILL
    assert train_in_process(config, "--resume") == 0
    assert_same_run(run_dir, reference)


def test_resume_with_a_breaking_change_is_refused(corpus, reference, tmp_path, capsys):
    run_dir = tmp_path / "run"
    changed = tiny_config(corpus, **{"data.batch_size": 8})
    config = write_run(run_dir, changed)
    code = train_in_process(config, "--resume", str(reference / "checkpoints"))
    assert code == 4
    err = capsys.readouterr().err
    assert "data.batch_size: 4 -> 8" in err and "cannot resume" in err


def test_repeated_nonfinite_losses_stop_the_run(corpus, tmp_path, capsys):
    cfg = tiny_config(
        corpus,
        **{
            "optimizer.learning_rate": 1.0e6,
            "optimizer.max_grad_norm": None,
            "scheduler.warmup_steps": 0,
            "runtime.max_nonfinite_steps": 3,
            "runtime.checkpoint.every_n_steps": 1,
        },
    )
    run_dir = tmp_path / "run"
    assert train_in_process(write_run(run_dir, cfg)) == 5
    err = capsys.readouterr()
    assert "3 consecutive non-finite losses" in err.err
    assert "update skipped" in err.out
    assert list((run_dir / "checkpoints").iterdir())  # the last good checkpoint is kept


def test_seed_training_yaml_dry_run_and_one_step(corpus, seed_yaml_text, tmp_path, capsys):
    seed = yaml.safe_load(seed_yaml_text)
    seed_file = tmp_path / "seed.yaml"
    seed_file.write_text(seed_yaml_text)
    assert cli_main(["train", "--config", str(seed_file), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "planned tokens: 39,321,600,000" in out and "lr at step: 1: 6e-08" in out
    assert "parameters without embeddings" in out

    # The same file with a reduced model, one step, and its /workspace paths moved into tmp.
    run_dir = tmp_path / "runs" / "runpod-1b-streaming"
    run_dir.mkdir(parents=True)
    seed["model"].update(
        hidden_size=64,
        intermediate_size=128,
        num_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=64,
    )
    seed["tokenizer"] = {
        "tokenizer_json": str(corpus / "tok" / "tokenizer.json"),
        "vocab": str(corpus / "tok" / "vocab.json"),
        "merges": str(corpus / "tok" / "merges.txt"),
        "special_tokens": str(run_dir / "special_tokens.txt"),
    }
    seed["data"].update(
        cache_dir=str(tmp_path / "cache"),
        sequence_length=32,
        num_workers=0,
        validation_documents=40,
    )
    seed["scheduler"].update(warmup_steps=0, total_steps=1)
    rt = seed["runtime"]
    rt["checkpoint"]["directory"] = str(run_dir / "checkpoints")
    rt["evaluation"]["best"]["directory"] = str(run_dir / "best")
    rt["evaluation"]["max_batches"] = 2
    rt["logging"]["tensorboard"] = str(run_dir / "tensorboard")
    (run_dir / "special_tokens.txt").write_text('["<|endoftext|>", "<|pad|>"]\n')
    (run_dir / "streaming_config.json").write_text(
        json.dumps({"dataset": str(corpus / "train.jsonl"), "split": "train"})
    )
    config = write_run(run_dir, seed)
    if cpu_has_fast_bf16():
        assert train_in_process(config) == 0
    else:
        with pytest.warns(UserWarning, match="bf16"):  # the seed asks bf16; this CPU has none
            assert train_in_process(config) == 0
    assert (run_dir / "checkpoints" / "step-00000001" / "manifest.json").is_file()
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["step"] == 1 and records[0]["loss"] > 0
    assert any("val_loss" in r for r in records)


def test_total_epochs_sizes_the_schedule_and_checkpoints_per_epoch(tmp_path, capsys):
    """total_steps null + total_epochs: the epoch is measured, the run stops after 2 epochs,
    checkpoints and evaluates every epoch, and the LR ends near min_lr."""
    root = tmp_path / "small"
    root.mkdir()
    write_kjv_corpus(root, 25, 300)
    cfg = tiny_config(
        root,
        **{
            "scheduler.total_steps": None,
            "scheduler.total_epochs": 2,
            "scheduler.min_lr": 1.0e-4,
            "data.validation_documents": 3,
            "data.batch_size": 8,
            "runtime.log_every_n_steps": 1,
            "runtime.checkpoint": {"every_n_epochs": 1, "max_keep": None},
            "runtime.evaluation": {"every_n_epochs": 1, "max_batches": 2},
        },
    )
    run_dir = tmp_path / "run"
    assert train_in_process(write_run(run_dir, cfg)) == 0
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    total = steps[-1]["step"]
    # The measured epoch may differ from the next by a step (packing carries tokens across),
    # so the run ends within a step of the planned total: the LR is near the floor.
    planned = int(capsys.readouterr().out.split(f"step {total}/")[1].split()[0])
    assert total >= 4 and planned - 1 <= total <= planned
    assert 1.0e-4 <= steps[-1]["lr"] < 2.5e-4
    assert {r["epoch"] for r in steps} == {0, 1}
    saved = [p.name for p in (run_dir / "checkpoints").iterdir()]
    assert len(saved) == 2 and f"step-{total:08d}" in saved  # end of epoch 1 and the end
    assert sum("val_loss" in r for r in records) == 2


def _nested_equal(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_nested_equal(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(_nested_equal(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def test_background_checkpoints_hold_the_state_of_their_step(corpus, tmp_path, monkeypatch):
    """A checkpoint write that lags behind training (each job first sleeps while steps go on)
    still saves its own step's weights, optimizer state, RNG and data position: the same bytes
    as a synchronous save. It fails if the snapshot shares tensors with the live state."""
    from lmstream.train import checkpointer as checkpointer_module
    from lmstream.train.background import CheckpointWriter

    class LaggingWriter(CheckpointWriter):
        def submit(self, job):
            def late() -> list[str]:
                time.sleep(0.3)
                return job()

            return super().submit(late)

    sync_dir, lag_dir = tmp_path / "sync", tmp_path / "lagging"
    sync = tiny_config(corpus, **{"runtime.checkpoint.async_save": False})
    assert train_in_process(write_run(sync_dir, sync)) == 0
    monkeypatch.setattr(checkpointer_module, "CheckpointWriter", LaggingWriter)
    assert train_in_process(write_run(lag_dir, tiny_config(corpus))) == 0
    for sub in ("checkpoints", "best"):
        names = sorted(p.name for p in (sync_dir / sub).iterdir())
        assert names and names == sorted(p.name for p in (lag_dir / sub).iterdir())
        for name in names:
            a, b = lag_dir / sub / name, sync_dir / sub / name
            ck.verify_checkpoint(a)
            assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
            state_a = torch.load(a / "trainer_state.pt", weights_only=True)
            state_b = torch.load(b / "trainer_state.pt", weights_only=True)
            assert _nested_equal(state_a, state_b), f"{sub}/{name} differs"
