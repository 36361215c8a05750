"""A data mixture on 2 ranks (torchrun, gloo) with 2 loader workers each: stopped and resumed, the
job matches the uninterrupted one step for step; the per-source metrics are summed over ranks
(tokens_seen/NAME adds up to tokens_seen) and every rank evaluates every source; a run by
epochs ends each epoch on both ranks at once and resumes exactly across its boundary."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.distributed.support import metrics, run_job
from tests.support.mixture import mixture_config, write_sources
from tests.support.training import write_run

from lmstream.train import checkpoint as ckpt

pytestmark = [pytest.mark.distributed, pytest.mark.slow]
STEPS = 12
WEIGHTS = {"a": 0.5, "b": 0.3, "c": 0.2}


def _config(root: Path, paths: dict, **overrides) -> dict:
    return mixture_config(root, paths, WEIGHTS, STEPS, **{
        "data.num_workers": 2,
        "model.residual_dropout": 0.1,
        "scheduler.strategy": "constant_with_warmup",
        "runtime.checkpoint": {"every_n_steps": 4, "max_keep": 2, "async_save": False},
        "runtime.evaluation": {"every_n_steps": 6, "max_batches": 2},
        **overrides,
    })  # fmt: skip


def test_mixture_on_two_ranks_resumes_exactly(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    paths = write_sources(root, {"a": 200, "b": 60, "c": 100}, files=3)
    full = write_run(tmp_path / "full", _config(root, paths))
    done = run_job("train", "--config", str(full))
    assert done.returncode == 0, done.stdout
    short = write_run(tmp_path / "run", _config(root, paths, **{"scheduler.total_steps": 5}))
    assert run_job("train", "--config", str(short)).returncode == 0
    resumed = write_run(tmp_path / "run", _config(root, paths))
    done = run_job("train", "--config", str(resumed), "--resume")
    assert done.returncode == 0, done.stdout
    assert metrics(tmp_path / "run") == metrics(tmp_path / "full")
    records = [
        json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()
    ]
    last = [r for r in records if "loss" in r][-1]
    assert sum(last[f"tokens_seen/{n}"] for n in WEIGHTS) == last["tokens_seen"]
    vals = [r for r in records if "val_loss" in r]
    assert vals and all({f"val_loss/{n}" for n in WEIGHTS} <= set(r) for r in vals)


def test_mixture_epochs_on_two_ranks(tmp_path):
    """2 ranks x 2 workers, total_epochs 2 with evaluation and checkpoint every epoch: the ranks
    agree on each epoch's end (a pass over the primary source a for every worker), and a job
    stopped just after the first epoch's end resumes step for step (before, a mixture's
    total_epochs with several workers was refused)."""
    root = tmp_path / "data"
    root.mkdir()
    paths = write_sources(root, {"a": 200, "b": 60, "c": 100}, files=3)
    by_epochs = {
        "scheduler.total_steps": None,
        "scheduler.total_epochs": 2,
        "data.validation_documents": 6,
        "runtime.checkpoint": {"every_n_steps": None, "every_n_epochs": 1, "async_save": False},
        "runtime.evaluation": {"every_n_steps": None, "every_n_epochs": 1, "max_batches": 2},
    }
    full = write_run(tmp_path / "full", _config(root, paths, **by_epochs))
    done = run_job("train", "--config", str(full))
    assert done.returncode == 0, done.stdout
    state = ckpt.load_trainer_state(ckpt.resolve_checkpoint(tmp_path / "full" / "checkpoints"))
    per_epoch, last = state["state"]["steps_per_epoch"], max(metrics(tmp_path / "full"))
    # The second pass (other documents of b and c) may be a few steps shorter or longer than
    # the first, which sized the schedule: the run ends with it, on both ranks.
    assert per_epoch >= 3 and abs(last - 2 * per_epoch) <= 2
    assert sorted(metrics(tmp_path / "full", "val_loss")) == [per_epoch, last]
    epochs = metrics(tmp_path / "full", "epoch/a")
    assert epochs[per_epoch] == 0 and epochs[per_epoch + 1] == 1 and epochs[last] == 1
    short = _config(root, paths, **{**by_epochs, "scheduler.total_steps": per_epoch + 1})
    assert run_job("train", "--config", str(write_run(tmp_path / "run", short))).returncode == 0
    resumed = write_run(tmp_path / "run", _config(root, paths, **by_epochs))
    done = run_job("train", "--config", str(resumed), "--resume")
    assert done.returncode == 0, done.stdout
    assert metrics(tmp_path / "run") == metrics(tmp_path / "full")
    assert metrics(tmp_path / "run", "epoch/b") == metrics(tmp_path / "full", "epoch/b")
