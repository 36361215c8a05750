"""A step's gradient is the mean over every counted target token of every rank, not the mean of
the ranks' means: ranks with a padded final batch or an idle batch (an epoch's end) weigh by the
tokens they hold. Real torchrun job, gloo, DDP and FSDP2, against one process on the same
tokens."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tests.distributed import token_weight_job as job
from tests.distributed.support import JOB_TIMEOUT_S, job_env

from lmstream.data.packing import Batch
from lmstream.train.loop import forward_backward
from lmstream.train.precision import Precision

pytestmark = [pytest.mark.distributed, pytest.mark.slow]


def test_two_ranks_with_unequal_tokens_give_the_one_process_gradient(tmp_path: Path) -> None:
    out = tmp_path / "grads.pt"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    done = subprocess.run(
        [*launcher, "--nproc_per_node", "2", str(Path(job.__file__)), str(out)],
        env=job_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=JOB_TIMEOUT_S,
    )
    assert done.returncode == 0, done.stdout
    # One process, one batch of every real micro-batch's rows (the idle one left out).
    real = [b for rank in job.batches() for b in rank if b.weight > 0]
    whole = Batch(torch.cat([b.inputs for b in real]), torch.cat([b.targets for b in real]))
    model = job.tiny_model()
    loss = forward_backward(model, [whole], Precision("fp32", torch.device("cpu"), None), "cpu")
    expected = dict(model.named_parameters())
    for strategy, got in torch.load(out, weights_only=True).items():
        assert got["loss"] == pytest.approx(loss.item(), rel=1e-6), strategy
        for name, grad in got["grads"].items():
            torch.testing.assert_close(
                grad, expected[name].grad, rtol=1e-5, atol=1e-7, msg=f"{strategy} {name}"
            )
