"""Two ranks read a Hub dataset at one commit: rank 0 resolves `main` once and every rank (and
its data workers) reads that commit, so a push during start-up cannot split the ranks between
two commits (lmstream.data.pinning; the Hub is the loopback stand-in, tests/support/hub_server.py).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from tests.distributed.support import (
    JOB_TIMEOUT_S,
    hub_job_env,
    tiny_config,
    torchrun_args,
    write_hub_streaming_config,
)
from tests.support.hub_server import HubStandIn, dataset_sha
from tests.support.training import write_run

pytestmark = [pytest.mark.distributed, pytest.mark.slow]
HUB_ID = "acme/kjv"


def test_two_ranks_resolve_main_once_and_read_its_commit(corpus: Path, tmp_path: Path) -> None:
    files = {"data/train.jsonl": (corpus / "train.jsonl").read_bytes()}
    config = write_run(tmp_path / "run", tiny_config(corpus, **{
        "scheduler.total_steps": 4, "data.num_workers": 1,
        "runtime.checkpoint": {"every_n_steps": 4}, "runtime.evaluation.every_n_steps": 4,
    }))  # fmt: skip
    write_hub_streaming_config(tmp_path / "run", HUB_ID)
    with HubStandIn() as hub:
        hub.datasets[HUB_ID] = files
        env = hub_job_env(hub.url, tmp_path / "hf-home")
        done = subprocess.run(
            torchrun_args("train", "--config", str(config)), env=env, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, timeout=JOB_TIMEOUT_S,
        )  # fmt: skip
        paths = [path for _, path, *_ in hub.requests]
    assert done.returncode == 0, done.stdout[-3000:]
    commit = dataset_sha(files)
    by_name = [p for p in paths if "/main" in p or p.endswith(f"/api/datasets/{HUB_ID}")]
    assert by_name == [f"/api/datasets/{HUB_ID}"], by_name  # rank 0's one request
    assert any(f"/resolve/{commit}/data/" in p for p in paths)
    line = f"data: {HUB_ID} at main = commit {commit[:7]} (pinned for this run)"
    assert done.stdout.count(line) == 1, done.stdout[-3000:]
