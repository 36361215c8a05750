"""The run folder's lock under torchrun (issue #19, item 2): rank 0 takes it for the job and
every rank refuses, in one line each, when another process holds the folder; none is left
waiting in a collective. (Every other distributed test runs with rank 0 holding it.)"""

from __future__ import annotations

import os

import pytest
from tests.distributed.support import run_job, tiny_config
from tests.support.training import write_run

from lmstream.train.run_folder import LOCK_FILE, RunLock

pytestmark = [pytest.mark.distributed, pytest.mark.slow]


def test_every_rank_refuses_a_held_run_folder(corpus, tmp_path):
    config = write_run(tmp_path, tiny_config(corpus))
    held = RunLock(tmp_path).acquire()
    try:
        done = run_job("train", "--config", str(config))
    finally:
        held.release()
    assert done.returncode != 0, done.stdout
    for rank in (0, 1):
        assert (
            f"rank {rank}: {tmp_path} is in use by another lmstream process (pid {os.getpid()}"
            in (done.stdout)
        )
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / LOCK_FILE).exists()
