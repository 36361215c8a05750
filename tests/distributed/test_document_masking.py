"""model.document_masking on 2 ranks under torchrun (gloo): DDP trains and saves the
separator the masked model needs, and a resume from the middle checkpoint is bit-identical."""

from __future__ import annotations

import shutil

import pytest
import torch
from tests.distributed.support import TOTAL, metrics, run_job, tiny_config
from tests.support.training import write_run

from lmstream.train import checkpoint as ck

pytestmark = [pytest.mark.distributed, pytest.mark.slow]


def test_masked_run_on_two_ranks_trains_and_resumes(corpus, tmp_path) -> None:
    run = tmp_path / "run"
    config = write_run(run, tiny_config(corpus, **{"model.document_masking": True}))
    done = run_job("train", "--config", str(config))
    assert done.returncode == 0, done.stdout
    assert "world size 2" in done.stdout
    losses = metrics(run)
    assert sorted(losses) == list(range(1, TOTAL + 1)) and losses[TOTAL] < losses[1] - 0.3
    end = f"step-{TOTAL:08d}"
    want, cfg = ck.load_model_state(run / "checkpoints" / end)
    assert cfg.model.document_masking and cfg.model.document_separator_id is not None

    again = tmp_path / "again"
    again.mkdir()
    shutil.copyfile(config, again / "training.yaml")
    mid = run / "checkpoints" / f"step-{TOTAL // 2:08d}"
    done = run_job("train", "--config", str(again / "training.yaml"), "--resume", str(mid))
    assert done.returncode == 0, done.stdout
    got = metrics(again)
    assert got == {s: losses[s] for s in range(TOTAL // 2 + 1, TOTAL + 1)}
    weights, _ = ck.load_model_state(again / "checkpoints" / end)
    assert all(torch.equal(weights[k], want[k]) for k in want)
