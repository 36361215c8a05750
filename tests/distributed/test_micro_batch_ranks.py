"""runtime.micro_batch: auto under real 2-process torchrun jobs (gloo): both ranks take the same
cut (rank 0's measurement), the steps' losses are those of the written cut up to float
summation order, and a resume from the middle continues bit for bit."""

from __future__ import annotations

import shutil

import pytest
import torch
from tests.distributed.support import TOTAL, metrics, run_job, tiny_config
from tests.support.training import write_run

from lmstream.config import TrainingConfig
from lmstream.model.transformer import Transformer
from lmstream.tokenizer import load_tokenizer
from lmstream.train import checkpoint as ckpt
from lmstream.train.memory_plan import GB, plan_memory

pytestmark = [pytest.mark.distributed, pytest.mark.slow]


def _config(corpus, parallelism: str, setting: str) -> dict:
    """Micro-batches of 4 x 2 accumulation per rank; the limit admits a micro-batch of 1 only.
    No dropout: its masks are drawn per micro-batch shape, so another cut draws other masks."""
    cfg = tiny_config(corpus, **{
        "runtime.parallelism": parallelism, "runtime.micro_batch": setting,
        "model.residual_dropout": 0.0,
    })  # fmt: skip
    vocab = load_tokenizer(corpus / "tok" / "tokenizer.json").get_vocab_size()
    plan = TrainingConfig.model_validate({**cfg, "model": {**cfg["model"], "vocab_size": vocab}})
    with torch.device("meta"):
        n = Transformer(plan.model, vocab).num_parameters()
    fsdp = parallelism == "fsdp"
    one, two = (plan_memory(plan, n, m, 2, fsdp).total for m in (1, 2))
    cfg["runtime"]["memory_limit_gb"] = (one + two) / 2 / GB
    return cfg


# DDP passes the same test (3.5 min for both here under load); FSDP2, whose collectives run
# inside each micro-step's backward, is the one kept.
@pytest.mark.parametrize("parallelism", ["fsdp"])
def test_auto_under_two_ranks_keeps_the_losses_and_resumes_exactly(corpus, tmp_path, parallelism):
    fixed, auto, resumed = tmp_path / "fixed", tmp_path / "auto", tmp_path / "resumed"
    done = run_job(
        "train", "--config", str(write_run(fixed, _config(corpus, parallelism, "fixed")))
    )
    assert done.returncode == 0, done.stdout
    done = run_job("train", "--config", str(write_run(auto, _config(corpus, parallelism, "auto"))))
    assert done.returncode == 0, done.stdout
    assert done.stdout.count("micro-batch 1 x 8 instead of 4 x 2") == 1, done.stdout  # rank 0
    want, got = metrics(fixed), metrics(auto)
    assert sorted(got) == list(range(1, TOTAL + 1))
    assert all(got[s] == pytest.approx(want[s], rel=1e-4) for s in want), (got, want)

    resumed.mkdir()
    shutil.copyfile(auto / "training.yaml", resumed / "training.yaml")
    mid = auto / "checkpoints" / f"step-{TOTAL // 2:08d}"
    done = run_job("train", "--config", str(resumed / "training.yaml"), "--resume", str(mid))
    assert done.returncode == 0, done.stdout
    assert "micro-batch 1 x 8 (as in the checkpoint)" in done.stdout, done.stdout
    again = metrics(resumed)
    assert all(again[s] == got[s] for s in again), (again, got)
    end = f"step-{TOTAL:08d}"
    a, _ = ckpt.load_model_state(resumed / "checkpoints" / end)
    b, _ = ckpt.load_model_state(auto / "checkpoints" / end)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
