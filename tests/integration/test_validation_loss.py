"""val_loss means one thing: the loss per token over a fixed set of sequences. Runs that differ
only in how a batch is split log the same val_loss; `lmstream eval` reproduces it whatever its
--batch-size, in the precision the run trained in."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tests.distributed.support import tiny_config
from tests.support.training import write_kjv_corpus, write_run

from lmstream.cli import main
from lmstream.train.precision import cpu_has_fast_bf16

pytestmark = pytest.mark.slow
STEPS = 10


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_kjv_corpus(tmp_path_factory.mktemp("corpus"), 200, 300)


def _train(corpus: Path, run_dir: Path, **overrides) -> dict:
    """Train STEPS steps in this process (one thread) and return the last logged val_loss record."""
    overrides = {
        "scheduler.total_steps": STEPS,
        "runtime.checkpoint.every_n_steps": STEPS,
        "runtime.evaluation.every_n_steps": STEPS,
        # One worker: with several, each micro-batch comes from the next worker in turn, so
        # 8x1 and 4x2 steps would hold different rows (a data-order matter, not evaluation's).
        "data.num_workers": 1,
        "model.residual_dropout": 0.0,  # dropout masks depend on the batch shape
        "runtime.logging.tensorboard": None,
        **overrides,
    }
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        config = write_run(run_dir, tiny_config(corpus, **overrides))
        assert main(["train", "--config", str(config)]) == 0
    finally:
        torch.set_num_threads(threads)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if "val_loss" in r][-1]


def _eval(capsys, run_dir: Path, *args: str) -> dict:
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(run_dir / "checkpoints"), "--json", *args]) == 0
    return json.loads(capsys.readouterr().out)


def test_batch_splits_log_the_same_val_loss_and_eval_reproduces_it(corpus, tmp_path, capsys):
    logged = {}
    for bsz, accum in ((8, 1), (4, 2), (2, 4)):
        run_dir = tmp_path / f"{bsz}x{accum}"
        overrides = {"data.batch_size": bsz, "data.gradient_accumulation_steps": accum}
        logged[bsz, accum] = _train(corpus, run_dir, **overrides)["val_loss"]
    values = list(logged.values())
    # the same weights (to float rounding) evaluated on the same sequences
    assert values == pytest.approx([values[0]] * 3, rel=1e-5), logged
    # `lmstream eval` on the same checkpoint: the logged number, whatever its --batch-size
    for args in ((), ("--batch-size", "3"), ("--batch-size", "16")):
        result = _eval(capsys, tmp_path / "2x4", *args)
        assert result["val_loss"] == pytest.approx(logged[2, 4], rel=1e-6), args
        assert result["sequences"] == 16  # max_batches 2 x evaluation.batch_size 8


@pytest.mark.filterwarnings("ignore:runtime.precision")  # bf16 on a CPU: slow, tiny here
def test_eval_uses_the_checkpoints_precision(corpus, tmp_path, capsys):
    run_dir = tmp_path / "bf16"
    logged = _train(corpus, run_dir, **{"runtime.precision": "bf16"})
    result = _eval(capsys, run_dir)
    assert result["val_loss"] == pytest.approx(logged["val_loss"], rel=1e-6)
    assert result["precision"] == "bf16"
    fp32 = _eval(capsys, run_dir, "--precision", "fp32")
    assert fp32["precision"] == "fp32" and fp32["val_loss"] != result["val_loss"]
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(run_dir / "checkpoints")]) == 0
    out = capsys.readouterr()
    assert "precision: bf16 (the checkpoint's runtime.precision)" in out.out
    assert ("--precision fp32 is faster" in out.err) == (not cpu_has_fast_bf16())
