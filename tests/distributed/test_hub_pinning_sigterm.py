"""SIGTERM to the torchrun parent of a 2-rank job streaming a Hub dataset of uneven files with 8
data workers per rank, then `main` moves and the job resumes: it reads the commit it started
with and ends as the job that never stopped (lmstream.data.pinning)."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest
from tests.distributed.support import (
    JOB_TIMEOUT_S,
    hub_job_env,
    metrics,
    tiny_config,
    torchrun_args,
    wait_for_step,
    write_hub_streaming_config,
)
from tests.distributed.test_failures import finish
from tests.reliability.support import assert_same_weights
from tests.support.hub_server import HubStandIn, dataset_sha, uneven_dataset_files
from tests.support.training import write_run

pytestmark = [pytest.mark.distributed, pytest.mark.slow]
HUB_ID = "acme/kjv"
STEPS = 40


def _run(root: Path, corpus: Path) -> Path:
    config = write_run(root, tiny_config(corpus, **{
        "scheduler.total_steps": STEPS, "data.num_workers": 8,
        "scheduler.strategy": "constant_with_warmup",
        "runtime.checkpoint": {"every_n_steps": None, "max_keep": 2, "async_save": False},
        "runtime.evaluation": {"every_n_steps": 20, "max_batches": 2},
    }))  # fmt: skip
    write_hub_streaming_config(root, HUB_ID)
    return config


def test_sigterm_to_torchrun_then_resume_after_main_moved(corpus: Path, tmp_path: Path) -> None:
    first = uneven_dataset_files(corpus / "train.jsonl", [10, 30])
    moved = uneven_dataset_files(corpus / "train.jsonl", [10, 30], reverse=True)
    with HubStandIn() as hub:
        hub.datasets[HUB_ID] = first
        env = hub_job_env(hub.url, tmp_path / "hf-home")
        kw = {"env": env, "stdout": subprocess.PIPE, "stderr": subprocess.STDOUT, "text": True}
        full = _run(tmp_path / "full", corpus)
        t0 = time.monotonic()
        done = subprocess.run(torchrun_args("train", "--config", str(full)),
                              timeout=JOB_TIMEOUT_S, **kw)  # fmt: skip
        print(f"uninterrupted job: {time.monotonic() - t0:.1f} s")
        assert done.returncode == 0, done.stdout[-3000:]
        run_dir = tmp_path / "run"
        config = _run(run_dir, corpus)
        proc = subprocess.Popen(torchrun_args("train", "--config", str(config)),
                                start_new_session=True, **kw)  # fmt: skip
        wait_for_step(run_dir, proc, 3)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)  # the parent only
        out, elapsed = finish(proc, started)
        print(f"SIGTERM to exit: {elapsed:.1f} s")
        last = max(metrics(run_dir))
        assert last < STEPS, "the run ended before the signal"
        hub.datasets[HUB_ID] = moved
        resumed = subprocess.run(torchrun_args("train", "--config", str(config), "--resume"),
                                 timeout=JOB_TIMEOUT_S, **kw)  # fmt: skip
        resolved = [path for _, path, *_ in hub.requests if "/resolve/" in path]
    assert resumed.returncode == 0, resumed.stdout[-3000:]
    print(f"stopped at step {last}")
    old, new = dataset_sha(first), dataset_sha(moved)
    assert f"commit {old[:7]} (pinned when the run started; the branch is now at {new[:7]})" in (
        resumed.stdout
    ), resumed.stdout[-3000:]
    assert not any(f"/resolve/{new}/" in p for p in resolved)
    assert metrics(run_dir) == metrics(tmp_path / "full")
    assert_same_weights(run_dir, tmp_path / "full", step=STEPS)
