"""SIGTERM to torchrun during a 2-source mixture on 2 ranks with 2 loader workers each (what a
pod stop sends): every rank saves the same last step, the job exits within torchrun's grace
period, and the resumed job ends as the one that never stopped, loss for loss and byte for byte."""

from __future__ import annotations

import re
import signal
import time
from pathlib import Path

import pytest
from tests.distributed.support import metrics, run_job, start_job, wait_for_step
from tests.distributed.test_failures import GRACE_S, finish
from tests.support.mixture import mixture_config, write_sources
from tests.support.training import write_run

from lmstream.train import checkpoint as ckpt

pytestmark = [pytest.mark.distributed, pytest.mark.slow]
STEPS = 40  # long enough that the signal lands mid-run (it is sent once step 3 is logged)
WEIGHTS = {"a": 0.6, "b": 0.4}


def _config(root: Path, paths: dict) -> dict:
    return mixture_config(root, paths, WEIGHTS, STEPS, **{
        "data.num_workers": 2,
        "model.residual_dropout": 0.1,  # each rank's RNG must resume too
        "scheduler.strategy": "constant_with_warmup",
        "runtime.checkpoint": {"every_n_steps": None, "max_keep": 2, "async_save": False},
        "runtime.evaluation": {"every_n_steps": 20, "max_batches": 2},
    })  # fmt: skip


def test_sigterm_on_a_mixture_saves_one_step_and_resumes_exactly(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    paths = write_sources(root, {"a": 200, "b": 80}, files=3)  # uneven files, 2 x 2 workers
    full = tmp_path / "full"
    done = run_job("train", "--config", str(write_run(full, _config(root, paths))))
    assert done.returncode == 0, done.stdout

    run_dir = tmp_path / "run"
    config = write_run(run_dir, _config(root, paths))
    proc = start_job("train", "--config", str(config))
    wait_for_step(run_dir, proc, 3)
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    out, elapsed = finish(proc, started)
    print(f"SIGTERM to torchrun's exit: {elapsed:.1f} s (2-source mixture, 2 ranks x 2 workers)")
    assert elapsed < GRACE_S, out
    assert "error:" not in out, out
    last = max(metrics(run_dir))
    assert last < STEPS, "the run ended before the signal: nothing was tested"
    stopped = rf"stopped by (SIGTERM|a signal to another rank)( while waiting for data,)? at step {last}; "
    assert re.search(stopped, out), out
    folder = ckpt.resolve_checkpoint(run_dir / "checkpoints", check_hashes=True)
    assert folder.name == ckpt.checkpoint_name(last)
    trainer = ckpt.load_trainer_state(folder)
    assert trainer["state"]["step"] == last and [d["rank"] for d in trainer["data"]] == [0, 1]

    resumed = run_job("train", "--config", str(config), "--resume")
    assert resumed.returncode == 0, resumed.stdout
    assert metrics(run_dir) == metrics(full)
    assert metrics(run_dir, "val_loss") == metrics(full, "val_loss")
    name = ckpt.checkpoint_name(STEPS)
    assert (run_dir / "checkpoints" / name / "model.safetensors").read_bytes() == (
        full / "checkpoints" / name / "model.safetensors"
    ).read_bytes()
