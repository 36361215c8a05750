"""Ranks split the validation set, they do not each evaluate their own: the val_loss a 2-rank job
logs is the one `lmstream eval` computes in one process on the same checkpoint, also when the
set does not divide by the world size (FSDP: padding rows keep the ranks' forward passes equal)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.distributed.support import TOTAL, metrics, run_job, tiny_config
from tests.support.training import write_run

from lmstream.cli import main as cli_main

pytestmark = [pytest.mark.distributed, pytest.mark.slow]


@pytest.mark.parametrize(
    ("parallelism", "evaluation"),
    [
        ("ddp", {"runtime.evaluation.max_batches": 2}),
        ("fsdp", {"runtime.evaluation.max_sequences": 7, "runtime.evaluation.batch_size": 2}),
    ],
)
def test_two_ranks_log_the_val_loss_of_one_process(
    corpus: Path, tmp_path: Path, capsys, parallelism: str, evaluation: dict
) -> None:
    cfg = tiny_config(corpus, **{"runtime.parallelism": parallelism, **evaluation})
    done = run_job("train", "--config", str(write_run(tmp_path / "run", cfg)))
    assert done.returncode == 0, done.stdout
    logged = metrics(tmp_path / "run", "val_loss")[TOTAL]
    final = tmp_path / "run" / "checkpoints" / f"step-{TOTAL:08d}"
    assert cli_main(["eval", "--checkpoint", str(final), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["val_loss"] == pytest.approx(logged, rel=1e-6)
    assert result["sequences"] == (7 if "runtime.evaluation.max_sequences" in evaluation else 16)
