"""Disk full while a checkpoint is written: a clear error, earlier checkpoints intact, resumable.

No root or tmpfs needed: the training subprocess runs under ``RLIMIT_FSIZE`` (set in its
``preexec_fn``), so any file it writes beyond the limit fails with EFBIG, as a write on a full
disk fails with ENOSPC (Python ignores SIGXFSZ, so the write returns an error instead of the
process being killed). The limit sits above the logs and below a checkpoint's weights.
"""

from __future__ import annotations

import resource

import pytest
from tests.reliability.support import (
    TOTAL,
    assert_checkpoints_complete,
    assert_same_weights,
    start_train,
    subprocess_env,
    tiny_config,
)
from tests.support.training import train_in_process, write_run

from lmstream.train import checkpoint as ckpt

pytestmark = pytest.mark.slow
LIMIT = 200_000  # bytes per file: metrics.jsonl and TensorBoard stay below, weights do not


def _limit_file_size() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT, LIMIT))


def test_disk_full_during_checkpoint_write(corpus, reference, tmp_path):
    run_dir = tmp_path / "run"
    # 20 good steps first (the reference's prefix: the schedule is constant after warmup).
    short = tiny_config(corpus, **{"scheduler.total_steps": 20})
    assert train_in_process(write_run(run_dir, short)) == 0
    before = {
        p.name: ckpt.verify_checkpoint(p) for p in ckpt.list_checkpoints(run_dir / "checkpoints")
    }
    assert "step-00000020" in before

    config = write_run(run_dir, tiny_config(corpus))  # total_steps 40 again (an allowed change)
    proc = start_train(config, "--resume", preexec_fn=_limit_file_size)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 4, f"exit {proc.returncode}:\n{out}\n{err}"
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert "cannot write checkpoint" in lines[0] and "step-00000022" in lines[0], lines[0]
    assert "File too large" in lines[0] or "No space" in lines[0], lines[0]

    # The earlier checkpoints are intact (same manifests, hashes verify), nothing half-written
    # is left, and resuming once there is space again finishes as the uninterrupted run.
    after = assert_checkpoints_complete(run_dir / "checkpoints")
    assert {p.name for p in after} == set(before)
    assert all(ckpt.verify_checkpoint(p) == before[p.name] for p in after)
    assert not [p for p in (run_dir / "checkpoints").iterdir() if p.name.startswith(".tmp")]
    assert train_in_process(config, "--resume") == 0
    assert_same_weights(run_dir, reference, TOTAL)


def test_a_failed_write_while_stopping_does_not_hide_the_error(corpus, tmp_path):
    """Issue #19 item 12: the run stops with an error (non-finite losses from step 3 on) while
    step 2's checkpoint, written in the background, fails on the full disk. The clean-up that
    waits for that write used to raise its error in place of the first one (exit 4, the
    non-finite losses never mentioned); now the run ends with the first error (exit 5) and the
    failed write is reported beside it."""
    cfg = tiny_config(corpus, **{"runtime.max_nonfinite_steps": 1})
    cfg["runtime"]["checkpoint"]["async_save"] = True
    config = write_run(tmp_path / "run", cfg)
    env = subprocess_env(LMSTREAM_FAULT_NONFINITE_STEPS="3-")
    proc = start_train(config, env=env, preexec_fn=_limit_file_size)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 5, f"exit {proc.returncode}:\n{out}\n{err}"
    assert "consecutive non-finite losses" in err, err
    assert "while stopping after the error below: cannot write checkpoint" in out + err, out
