"""The run folder keeps its history (issue #19, items 1-4): a rollback moves the newer branch
aside instead of rotating the new checkpoints away, a fresh start in a used folder is refused
(or `--restart` moves the old state aside), a second process is refused while the first holds
the folder, and a finished run resumes as a no-op that a later extension continues exactly.
Every run is the real CLI on the tiny reliability model."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from pathlib import Path

import pytest
from tests.reliability.support import (
    assert_same_weights,
    logged_steps,
    start_train,
    tiny_config,
    tree,
    wait_until,
)
from tests.support.training import train_in_process, write_run

from lmstream.train import checkpoint as ckpt
from lmstream.train.run_folder import ABANDONED_DIR, RunFolderError, RunLock

BUSY = RunFolderError.exit_code


def _losses(run_dir: Path) -> dict[int, float]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r["loss"] for r in map(json.loads, lines) if "loss" in r}


def _names(directory: Path) -> list[str]:
    return [p.name for p in ckpt.list_checkpoints(directory)]


def _tensorboard_steps(folder: Path) -> list[int]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return [e.step for e in acc.Scalars("train/loss")]


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.slow
def test_rollback_moves_the_newer_branch_aside(corpus, reference, tmp_path, capsys):
    """The issue's recipe: a run holding step-10/20/30, resumed from step-10 with max_keep 2,
    every_n_steps 5, total_steps 18. It used to rotate its own new step-15/18 away (keeping
    the abandoned 20/30), and a later --resume continued the abandoned step 30."""
    run_dir = tmp_path / "run"
    tb = {"runtime.logging.tensorboard": str(run_dir / "tb")}
    first = {"scheduler.total_steps": 30, "runtime.checkpoint.every_n_steps": 10, **tb}
    assert train_in_process(write_run(run_dir, tiny_config(corpus, **first))) == 0
    ck = run_dir / "checkpoints"
    assert _names(ck) == ["step-00000010", "step-00000020", "step-00000030"]
    rolled = {
        "scheduler.total_steps": 18,
        "runtime.checkpoint.every_n_steps": 5,
        "runtime.checkpoint.max_keep": 2,
        **tb,
    }
    config = write_run(run_dir, tiny_config(corpus, **rolled))
    before = tree(run_dir)
    capsys.readouterr()
    # Without --rollback: refused in one line, nothing moved or written.
    assert train_in_process(config, "--resume", str(ck / "step-00000010")) == BUSY
    line = _one_line(capsys.readouterr().err)
    assert "newer checkpoints exist (step-00000020, step-00000030)" in line and "--rollback" in line
    assert tree(run_dir) == before
    # With it: the new branch is kept, the old one moved into abandoned/, nothing deleted.
    assert train_in_process(config, "--resume", str(ck / "step-00000010"), "--rollback") == 0
    out = capsys.readouterr().out
    assert "rolled back to step 10: moved checkpoints step-00000020, step-00000030" in out
    assert _names(ck) == ["step-00000015", "step-00000018"]
    assert ckpt.read_manifest(ck / "step-00000015")["parent"] == "step-00000010"
    (abandoned,) = (run_dir / ABANDONED_DIR).iterdir()
    assert _names(abandoned / "checkpoints") == ["step-00000020", "step-00000030"]
    assert sorted(_losses(abandoned)) == list(range(11, 31))
    assert logged_steps(run_dir) == list(range(1, 19))  # each step once
    assert _tensorboard_steps(run_dir / "tb") == list(range(1, 19))  # 19-30 purged
    assert _tensorboard_steps(abandoned / "tensorboard") == list(range(1, 31))  # kept there
    want = _losses(reference)  # the same schedule: steps 11-18 are the reference's
    assert all(_losses(run_dir)[s] == want[s] for s in range(1, 19))
    # A plain --resume now continues the new branch (finished at 18), not the abandoned 30.
    assert train_in_process(config, "--resume") == 0
    assert "nothing to do: the run is finished (step 18 of 18)" in capsys.readouterr().out


@pytest.mark.slow
def test_fresh_start_in_a_used_folder_is_refused_or_restarts(corpus, reference, tmp_path, capsys):
    """`train` without --resume in a folder with checkpoints used to wipe metrics.jsonl and
    delete its own first checkpoint; now it refuses, and --restart moves the old state aside."""
    run_dir = tmp_path / "run"
    config = write_run(run_dir, tiny_config(corpus, **{"scheduler.total_steps": 6}))
    assert train_in_process(config) == 0
    before = tree(run_dir)
    capsys.readouterr()
    assert train_in_process(config) == BUSY
    line = _one_line(capsys.readouterr().err)
    assert "already holds checkpoints" in line and "--resume" in line and "--restart" in line
    assert tree(run_dir) == before
    assert train_in_process(config, "--restart") == 0
    out = capsys.readouterr().out
    assert "starting at step 0: moved the previous run's 3 checkpoints" in out
    (abandoned,) = (run_dir / ABANDONED_DIR).iterdir()
    assert _names(abandoned / "checkpoints") == _names(run_dir / "checkpoints")
    assert _losses(abandoned) == _losses(run_dir)  # the same seed: the same run again
    assert logged_steps(run_dir) == list(range(1, 7))


@pytest.mark.slow
def test_second_process_on_a_run_folder_is_refused(corpus, reference, tmp_path):
    """Two `lmstream train` on one folder deleted each other's temporary checkpoint folders
    (one died with "is the disk full?") and wrote 84 metrics lines for 80 steps. The first one
    is frozen (SIGSTOP) while it holds the folder, so the second surely meets it."""
    run_dir = tmp_path / "run"
    config = write_run(run_dir, tiny_config(corpus))
    first = start_train(config)
    try:
        assert wait_until(first, lambda: len(logged_steps(run_dir)) >= 2)
        first.send_signal(signal.SIGSTOP)
        started = time.monotonic()
        second = start_train(config, "--resume")
        _, err = second.communicate(timeout=120)
        refused_in = time.monotonic() - started
        first.send_signal(signal.SIGCONT)
        assert second.returncode == BUSY, err
        line = _one_line(err)
        assert (
            f"in use by another lmstream process (pid {first.pid} on host {os.uname()[1]}" in line
        )
        out, err = first.communicate(timeout=300)
    finally:
        first.kill()
    assert first.returncode == 0, err
    assert logged_steps(run_dir) == list(range(1, 41))  # each step once
    assert_same_weights(run_dir, reference)
    print(f"second process refused in {refused_in:.1f}s")


@pytest.mark.slow
def test_finished_run_resumes_as_a_no_op_and_extends_exactly(corpus, reference, tmp_path, capsys):
    """Resuming a finished run used to prime a batch it never trained, re-save the last step
    with the loader one micro-batch further and log val_loss again: the extension then skipped
    a batch. Now it says so and changes nothing; the extension equals the reference."""
    run_dir = tmp_path / "run"
    half = tiny_config(corpus, **{"scheduler.total_steps": 20})
    config = write_run(run_dir, half)
    assert train_in_process(config) == 0
    last = run_dir / "checkpoints" / "step-00000020"
    manifest, metrics = (
        (last / "manifest.json").read_text(),
        (run_dir / "metrics.jsonl").read_text(),
    )
    capsys.readouterr()
    assert train_in_process(config, "--resume") == 0
    assert "nothing to do: the run is finished (step 20 of 20)" in capsys.readouterr().out
    assert (last / "manifest.json").read_text() == manifest  # not re-saved
    assert (run_dir / "metrics.jsonl").read_text() == metrics  # no duplicate val_loss line
    assert train_in_process(write_run(run_dir, tiny_config(corpus)), "--resume") == 0
    assert logged_steps(run_dir) == list(range(1, 41))
    assert_same_weights(run_dir, reference)


@pytest.mark.slow
@pytest.mark.parametrize("every", [4, 100], ids=["best-newer", "best-only"])
def test_resume_continues_from_a_best_copy_newer_than_any_checkpoint(
    corpus, tmp_path, monkeypatch, capsys, every
):
    """A best copy is a full checkpoint saved at evaluation steps, which need not be checkpoint
    steps. A run that crashed after one (here a non-finite loss at step 7) was resumed from an
    older checkpoint (the best copy moved aside: 2 steps redone), or with only best copies
    refused, telling the user who had passed --resume to 'continue with --resume'."""
    from lmstream.train.faults import NONFINITE_ENV

    run_dir = tmp_path / "run"
    cfg = tiny_config(corpus, **{"scheduler.total_steps": 8, "runtime.max_nonfinite_steps": 1,
                                 "runtime.checkpoint.every_n_steps": every,
                                 "runtime.evaluation.every_n_steps": 2,
                                 "runtime.evaluation.best.max_keep": 10})  # fmt: skip
    config = write_run(run_dir, cfg)
    monkeypatch.setenv(NONFINITE_ENV, "7-")
    assert train_in_process(config) != 0
    assert _names(run_dir / "best")[-1] == "step-00000006"
    monkeypatch.delenv(NONFINITE_ENV)
    capsys.readouterr()
    assert train_in_process(config, "--resume") == 0
    out = capsys.readouterr().out
    assert f"resumed from {run_dir / 'best' / 'step-00000006'} at step 6" in out
    assert not (run_dir / ABANDONED_DIR).exists()
    assert logged_steps(run_dir) == list(range(1, 9))
    if every == 4:  # the best copy resumes as exactly as a checkpoint would
        assert train_in_process(write_run(tmp_path / "never-stopped", cfg)) == 0
        assert_same_weights(run_dir, tmp_path / "never-stopped", step=8)


@pytest.mark.slow
def test_a_damaged_best_copy_newer_than_any_checkpoint_is_skipped(
    corpus, tmp_path, monkeypatch, capsys
):
    """A plain --resume falls back to the newest intact checkpoint; a damaged best copy newer
    than every checkpoint (4 KB zeroed in its weights, same size) made it refuse the run
    instead ("there is no intact checkpoint in RUN/best") while checkpoints/step-4 was intact."""
    from lmstream.train.faults import NONFINITE_ENV

    run_dir = tmp_path / "run"
    cfg = tiny_config(corpus, **{"scheduler.total_steps": 8, "runtime.max_nonfinite_steps": 1,
                                 "runtime.checkpoint.every_n_steps": 4,
                                 "runtime.evaluation.every_n_steps": 2,
                                 "runtime.evaluation.best.max_keep": 10})  # fmt: skip
    config = write_run(run_dir, cfg)
    monkeypatch.setenv(NONFINITE_ENV, "7-")
    assert train_in_process(config) != 0
    monkeypatch.delenv(NONFINITE_ENV)
    with open(run_dir / "best" / "step-00000006" / ckpt.MODEL_FILE, "r+b") as f:
        f.seek(16 * 1024)
        f.write(bytes(4096))
    capsys.readouterr()
    assert train_in_process(config, "--resume") == 0
    assert f"resumed from {run_dir / 'checkpoints' / 'step-00000004'} at step 4" in (
        capsys.readouterr().out
    )
    assert logged_steps(run_dir) == list(range(1, 9))


def _children(pid: int) -> list[int]:
    return [int(c) for t in Path(f"/proc/{pid}/task").iterdir()
            for c in (t / "children").read_text().split()]  # fmt: skip


@pytest.mark.slow
def test_lock_ends_with_the_process_not_with_its_loader_workers(corpus, tmp_path):
    """DataLoader workers are forked after the lock is taken and inherited its file, so the
    lock outlived a SIGKILLed (preempted, OOM-killed) trainer for as long as a worker did: up to
    a source's retry budget when one was stuck in a stalled read (frozen here with SIGSTOP), and
    the restarted run was refused as 'in use' by the dead pid."""
    run_dir = tmp_path / "run"
    config = write_run(run_dir, tiny_config(corpus, **{"data.num_workers": 2}))
    proc = start_train(config)
    workers: list[int] = []
    try:
        assert wait_until(proc, lambda: len(logged_steps(run_dir)) >= 2)
        workers = _children(proc.pid)
        assert workers, "no loader workers"
        for pid in workers:
            os.kill(pid, signal.SIGSTOP)
        proc.kill()
        proc.wait(timeout=60)  # not communicate(): the frozen workers hold its pipes open
        lock = RunLock(run_dir).acquire()  # the trainer is gone: its lock is stale
        assert lock.took_over is not None and f"pid {proc.pid}" in lock.took_over
        lock.release()
    finally:
        proc.kill()
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
