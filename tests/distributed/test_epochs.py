"""Epoch-based runs on 2 ranks: each rank's part of the stream has its own length, yet the ranks
must agree on the schedule's length, on when an epoch ends and when the run stops (a rank that
stopped alone would leave its peer waiting in a collective)."""

from __future__ import annotations

import json

import pytest
from tests.distributed.support import metrics, run_job, tiny_config
from tests.support.training import write_run

from lmstream.train import checkpoint as ckpt

pytestmark = [pytest.mark.distributed, pytest.mark.slow]


def test_total_epochs_on_two_ranks(corpus, tmp_path):
    lines = (corpus / "train.jsonl").read_text().splitlines(keepends=True)
    (tmp_path / "small.jsonl").write_text("".join(lines[:50]))
    cfg = tiny_config(
        corpus,
        **{
            "data.train_shards": [str(tmp_path / "small.jsonl")],
            "data.validation_documents": 10,
            "scheduler.total_steps": None,
            "scheduler.total_epochs": 2,
            "scheduler.warmup_steps": 1,
        },
    )
    cfg["runtime"]["checkpoint"] = {"every_n_steps": None, "every_n_epochs": 1}
    cfg["runtime"]["evaluation"] = {"every_n_steps": None, "every_n_epochs": 1, "max_batches": 2}
    config = write_run(tmp_path / "run", cfg)
    done = run_job("train", "--config", str(config))
    assert done.returncode == 0, done.stdout
    run_dir = tmp_path / "run"
    final = ckpt.resolve_checkpoint(run_dir / "checkpoints")
    trainer = ckpt.load_trainer_state(final)
    per_epoch = trainer["state"]["steps_per_epoch"]
    assert per_epoch >= 2
    last = trainer["state"]["step"]
    assert last == max(metrics(run_dir))
    # The run ends when the (agreed) stream rolls into epoch 2, at most 2 * the shortest rank's
    # epoch (the packer carries tokens across epochs, so epochs differ by a row or so).
    assert 2 * per_epoch - 3 <= last <= 2 * per_epoch
    # One evaluation and one checkpoint when epoch 1 begins (the same step on both ranks, or
    # the job would hang) and the final ones.
    evals = sorted(metrics(run_dir, "val_loss"))
    assert len(evals) == 2 and per_epoch <= evals[0] <= per_epoch + 2 and evals[1] == last
    steps = [json.loads((p / ckpt.MANIFEST_FILE).read_text())["step"]
             for p in ckpt.list_checkpoints(run_dir / "checkpoints")]  # fmt: skip
    assert steps == evals
