"""runtime.micro_batch: auto re-cuts each step's rows into the fastest micro-batch that fits a
memory limit, keeping the global batch and the data order; the choice is cached in the run
folder and recorded in the checkpoint, so a resume continues bit-exactly (real CPU runs; the
memory limit is set between the plans of two sizes so the choice is known in advance)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tests.support.training import (
    kjv_corpus_fixture,
    logged,
    tiny_training_config,
    train_in_process,
    write_run,
)

from lmstream.config import TrainingConfig
from lmstream.data.packing import Batch
from lmstream.model.transformer import Transformer
from lmstream.tokenizer import load_tokenizer
from lmstream.train.memory_plan import GB, plan_memory
from lmstream.train.micro_batch import CACHE_NAME, regroup

pytestmark = pytest.mark.slow


corpus = kjv_corpus_fixture(200, 300)


def config(corpus: Path, steps: int, **overrides) -> dict:
    """Batches of 2 x 2 accumulation; the limit admits micro-batch 1, not 2."""
    cfg = tiny_training_config(corpus, steps, **{
        "data.batch_size": 2,
        "data.gradient_accumulation_steps": 2,
        "data.num_workers": 2,
        "scheduler.strategy": "constant_with_warmup",
        "runtime.micro_batch": "auto",
        "runtime.checkpoint.every_n_steps": 3,
        **overrides,
    })  # fmt: skip
    vocab = load_tokenizer(corpus / "tok" / "tokenizer.json").get_vocab_size()
    plan = TrainingConfig.model_validate({**cfg, "model": {**cfg["model"], "vocab_size": vocab}})
    with torch.device("meta"):
        n = Transformer(plan.model, vocab).num_parameters()
    one, two = (plan_memory(plan, n, m).total for m in (1, 2))
    cfg["runtime"]["memory_limit_gb"] = (one + two) / 2 / GB
    return cfg


def test_regroup_keeps_the_rows_in_order():
    rows = torch.arange(4 * 3).view(4, 3)
    micro = [Batch(rows[:2], rows[:2] + 100), Batch(rows[2:], rows[2:] + 100)]
    cut = regroup(micro, 1)
    assert [b.inputs.tolist() for b in cut] == [[r] for r in rows.tolist()]
    assert torch.equal(torch.cat([b.targets for b in cut]), rows + 100)
    idle = [micro[0], Batch(rows[2:], rows[2:], weight=0.0)]
    assert regroup(idle, 1) is idle  # mixed weights: left as the loader made them


def test_auto_keeps_the_batch_and_order_and_resumes_exactly(corpus, tmp_path, capsys):
    fixed_dir, full_dir, run_dir = tmp_path / "fixed", tmp_path / "full", tmp_path / "run"
    assert (
        train_in_process(
            write_run(fixed_dir, config(corpus, 6, **{"runtime.micro_batch": "fixed"}))
        )
        == 0
    )
    assert "micro-batch" not in capsys.readouterr().out
    assert train_in_process(write_run(full_dir, config(corpus, 6))) == 0
    out = capsys.readouterr().out
    assert "micro-batch 1 x 4 instead of 2 x 2" in out, out
    # The same rows per step: the same losses up to float summation order.
    fixed, full = logged(fixed_dir, "loss"), logged(full_dir, "loss")
    assert fixed.keys() == full.keys()
    for step in fixed:
        assert full[step] == pytest.approx(fixed[step], rel=1e-5)

    assert train_in_process(write_run(run_dir, config(corpus, 3))) == 0
    assert (run_dir / "checkpoints" / CACHE_NAME).is_file()
    capsys.readouterr()
    assert train_in_process(write_run(run_dir, config(corpus, 6)), "--resume") == 0
    out = capsys.readouterr().out
    assert "micro-batch 1 x 4 (as in the checkpoint)" in out, out
    assert logged(run_dir, "loss") == full  # bit-exact continuation

    # A new run in the same folder reuses the measured choice instead of measuring again.
    assert train_in_process(write_run(run_dir, config(corpus, 2)), "--restart") == 0
    out = capsys.readouterr().out
    assert "micro-batch 1 x 4 instead of 2 x 2" in out and "(measured before" in out, out
