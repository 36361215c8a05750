"""What a step is: an applied update. fp16 overflows the GradScaler skips are skipped steps (logged,
counted toward runtime.max_nonfinite_steps, the schedule waits for them); accumulation averages
per target token, not per micro-batch."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from tests.support.models import tiny_model
from tests.support.training import write_kjv_corpus

from lmstream.config import OptimizerConfig, parse_training_config
from lmstream.data.packing import Batch
from lmstream.distributed import DistEnv
from lmstream.model.transformer import Transformer
from lmstream.train.loop import NonFiniteLossError, Trainer, forward_backward, optimizer_step
from lmstream.train.metrics import build_logger
from lmstream.train.optim import build_optimizer
from lmstream.train.precision import Precision
from lmstream.train.setup import build_run

CPU = torch.device("cpu")


def _model() -> Transformer:
    return tiny_model(
        64, hidden_size=16, intermediate_size=32, num_layers=1, num_attention_heads=2,
        max_position_embeddings=16,
    )  # fmt: skip


def _fp16(init_scale: float) -> Precision:
    # A real GradScaler; a huge initial scale makes the scaled fp16 gradients overflow for sure.
    return Precision("fp16", CPU, torch.amp.GradScaler("cpu", init_scale=init_scale))


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_an_fp16_overflow_is_a_skipped_update() -> None:
    model = _model()
    precision = _fp16(2.0**100)
    opt = build_optimizer(model, OptimizerConfig(learning_rate=1e-2), 1e-2, CPU)
    before = [p.detach().clone() for p in model.parameters()]
    batch = Batch.from_rows(torch.randint(0, 64, (2, 9)))
    loss = forward_backward(model, [batch], precision, CPU)
    assert torch.isfinite(loss)  # the loss is fine; the scaled gradients overflowed
    _, ok = optimizer_step(model, opt, precision, loss, 1e-2, 1.0)
    assert not ok, "the GradScaler skipped the update, so the step must say so"
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert not opt.state, "AdamW took no step"
    assert precision.scaler.get_scale() == 2.0**99  # the scaler still backed off


def test_accumulation_averages_per_token_across_micro_batches() -> None:
    torch.manual_seed(1)
    rows = torch.randint(0, 64, (4, 9))
    whole = Batch.from_rows(rows)
    whole.targets[0, 2:] = -100  # ignored positions, all in the first micro-batch
    whole.targets[1, 5:] = -100
    parts = [Batch(whole.inputs[i : i + 2], whole.targets[i : i + 2]) for i in (0, 2)]
    fp32 = Precision("fp32", CPU, None)
    grads = []
    for micro in ([whole], parts):
        model = _model()
        loss = forward_backward(model, micro, fp32, CPU)
        grads.append((loss, [p.grad.clone() for p in model.parameters()]))
    (loss_a, grads_a), (loss_b, grads_b) = grads
    torch.testing.assert_close(loss_a, loss_b, rtol=1e-6, atol=1e-6)
    for a, b in zip(grads_a, grads_b, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_an_idle_micro_batch_counts_no_tokens() -> None:
    torch.manual_seed(2)
    real = Batch.from_rows(torch.randint(0, 64, (2, 9)))
    idle = Batch(real.inputs.clone(), real.targets.clone(), weight=0.0)  # the loader's idle batch
    fp32 = Precision("fp32", CPU, None)
    grads = []
    for micro in ([real], [real, idle], [idle, idle]):
        model = _model()
        loss = forward_backward(model, micro, fp32, CPU)
        grads.append((loss, [p.grad.clone() for p in model.parameters()]))
    (loss_a, grads_a), (loss_b, grads_b), (loss_c, grads_c) = grads
    torch.testing.assert_close(loss_a, loss_b)
    for a, b in zip(grads_a, grads_b, strict=True):
        torch.testing.assert_close(a, b)
    assert loss_c == 0 and all(not g.any() for g in grads_c)


# ------------------------------------------------------------------- the loop, for real


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_kjv_corpus(tmp_path_factory.mktemp("corpus"), 60, 300)


def _run(corpus: Path, run_dir: Path, total: int, max_nonfinite: int, init_scale: float):
    cfg = parse_training_config(
        {
            "model": {
                "hidden_size": 16,
                "intermediate_size": 32,
                "num_layers": 1,
                "num_attention_heads": 2,
                "max_position_embeddings": 16,
            },
            "tokenizer": {"tokenizer_json": str(corpus / "tok" / "tokenizer.json")},
            "data": {
                "train_shards": [str(corpus / "train.jsonl")],
                "batch_size": 2,
                "sequence_length": 16,
                "validation_documents": 4,
                "num_workers": 2,
            },
            "optimizer": {"learning_rate": 1e-3},
            "scheduler": {"warmup_steps": 2, "total_steps": total},
            "runtime": {
                "precision": "fp16",
                "log_every_n_steps": 1,
                "max_nonfinite_steps": max_nonfinite,
                "evaluation": {"max_batches": 1},
                "logging": {"enable_stdout": False},
            },
        },
        run_dir,
    )
    with warnings.catch_warnings():  # fp16 on a CPU: slow, said by a warning; tiny here
        warnings.simplefilter("ignore")
        run = build_run(cfg, run_dir, DistEnv())
    run.precision = _fp16(init_scale)
    return run, build_logger(run.cfg, rank=0, total_steps=total, progress=False)


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_fp16_skips_are_logged_and_the_schedule_waits_for_applied_updates(corpus, tmp_path):
    # max_nonfinite_steps 3: the scaler's search down from 2^30 takes more skips than that, and
    # a search is not a failure (it stopped runs at step 0 when it counted)
    run, logger = _run(corpus, tmp_path, total=4, max_nonfinite=3, init_scale=2.0**30)
    try:
        assert Trainer(run, logger).fit() == 0
    finally:
        logger.close()
    records = [r for r in _records(tmp_path) if "loss" in r]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    skipped = records[-1]["skipped_steps"]
    assert skipped > 0 and run.state.skipped_steps == skipped
    # AdamW's own count: every logged step was an applied update
    assert all(s["step"] == 4 for s in run.optimizer.state.values())
    # the schedule is a function of applied updates: warmup is not spent on skipped ones
    assert [r["lr"] for r in records] == [run.schedule(s) for s in range(4)]
    assert all(r["grad_norm"] is not None for r in records)


def test_persistent_fp16_overflow_reaches_max_nonfinite_steps(corpus, tmp_path):
    run, logger = _run(corpus, tmp_path, total=4, max_nonfinite=3, init_scale=4.0)
    # Gradients that overflow whatever the scale: every backward puts an inf into one weight's
    # gradient (a real non-finite gradient through autograd, as an fp16 overflow gives).
    weight = next(p for p in run.model.parameters() if p.dim() == 2)
    weight.register_hook(lambda grad: grad * float("inf"))
    try:
        with pytest.raises(NonFiniteLossError, match="max_nonfinite_steps = 3"):
            Trainer(run, logger).fit()
    finally:
        logger.close()
    # scales 4 and 2: the scaler's search (skipped, not counted); at 1, 0.5, 0.25: counted
    assert run.state.step == 0 and run.state.skipped_steps == 5
