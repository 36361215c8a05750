"""A data mixture on 2 ranks (torchrun, gloo) with 2 loader workers each: stopped and resumed, the
job matches the uninterrupted one step for step; the per-source metrics are summed over ranks
(tokens_seen/NAME adds up to tokens_seen) and every rank evaluates every source."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.distributed.support import metrics, run_job
from tests.support.mixture import mixture_config, write_sources
from tests.support.training import write_run

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
