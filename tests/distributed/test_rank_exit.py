"""Two ranks that have trained to their end exit 0 even when a native thread is still running
then (lmstream.process_exit; tests/support/exit_probe.py starts one at exit): CPython's
finalization aborted such a rank with "terminate called without an active exception", and
torchrun reported the finished job as failed. The ranks' atexit handlers must still have run."""

from __future__ import annotations

import subprocess

import pytest
from tests.distributed.support import JOB_TIMEOUT_S, job_env, tiny_config, torchrun_args
from tests.support.exit_probe import exit_probe_env
from tests.support.training import write_run

pytestmark = [pytest.mark.distributed, pytest.mark.slow]


def test_finished_ranks_exit_0_with_a_native_thread_running(corpus, tmp_path):
    cfg = tiny_config(corpus, **{"scheduler.total_steps": 4, "scheduler.warmup_steps": 1})
    config = write_run(tmp_path / "run", cfg)
    env, markers = exit_probe_env(tmp_path, job_env(), ranks_only=True)
    done = subprocess.run(
        torchrun_args("train", "--config", str(config)),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=JOB_TIMEOUT_S,
    )
    assert done.returncode == 0, done.stdout
    assert "terminate called" not in done.stdout, done.stdout
    assert "== done: step 4 of 4" in done.stdout, done.stdout
    assert sorted(p.name for p in markers.iterdir()) == ["atexit-0", "atexit-1"]
