"""Muon (optimizer.algorithm: muon) under real 2-process torchrun jobs (gloo): DDP trains and
resumes bit for bit (with the spike guard on: both ranks skip the same injected spike, before
and after the resume); FSDP2 is refused in one line (Newton-Schulz needs whole matrices)."""

from __future__ import annotations

import shutil

import pytest
import torch
from tests.distributed.support import TOTAL, metrics, run_job, tiny_config
from tests.support.training import write_run

from lmstream.train import checkpoint as ckpt
from lmstream.train.faults import SPIKE_ENV

pytestmark = [
    pytest.mark.distributed,
    pytest.mark.slow,
    pytest.mark.skipif(not hasattr(torch.optim, "Muon"), reason="torch.optim.Muon: torch >= 2.9"),
]
MUON = {"optimizer.algorithm": "muon"}
GUARD = {"runtime.spike_guard": {"window": 8, "watch": "loss"}}


def test_muon_under_ddp_learns_and_resumes_exactly(corpus, tmp_path, monkeypatch):
    monkeypatch.setenv(SPIKE_ENV, "15")  # attempt 15's loss x 100, on every rank
    reference = tmp_path / "reference"
    cfg = tiny_config(corpus, **MUON, **GUARD)
    done = run_job("train", "--config", str(write_run(reference, cfg)))
    assert done.returncode == 0, done.stdout
    assert done.stdout.count("step 15: loss") == 1, done.stdout  # rank 0 reports it
    assert metrics(reference, "skipped_steps")[TOTAL] == 1
    loss = metrics(reference)
    assert sorted(loss) == list(range(1, TOTAL + 1)) and loss[TOTAL] < loss[1] - 0.5, loss
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copyfile(reference / "training.yaml", resumed / "training.yaml")
    mid = reference / "checkpoints" / f"step-{TOTAL // 2:08d}"
    done = run_job("train", "--config", str(resumed / "training.yaml"), "--resume", str(mid))
    assert done.returncode == 0, done.stdout
    assert "step 15: loss" in done.stdout, done.stdout
    got = metrics(resumed)
    assert sorted(got) == list(range(TOTAL // 2 + 1, TOTAL + 1))
    assert all(got[s] == loss[s] for s in got), (got, loss)
    end = f"step-{TOTAL:08d}"
    a, _ = ckpt.load_model_state(resumed / "checkpoints" / end)
    b, _ = ckpt.load_model_state(reference / "checkpoints" / end)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_muon_with_fsdp_is_refused_in_one_line(corpus, tmp_path):
    cfg = tiny_config(corpus, **MUON, **{"runtime.parallelism": "fsdp"})
    done = run_job("train", "--config", str(write_run(tmp_path / "run", cfg)))
    assert done.returncode != 0
    lines = [line for line in done.stdout.splitlines() if "muon does not support FSDP2" in line]
    assert lines and "runtime.parallelism: ddp" in lines[0], done.stdout
    assert "exitcode  : 2" in done.stdout or "exitcode: 2" in done.stdout, done.stdout
    assert "lmstream/train" not in done.stdout, (
        done.stdout
    )  # no lmstream traceback (torchrun's own remains)
