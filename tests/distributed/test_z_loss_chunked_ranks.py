"""optimizer.z_loss with runtime.chunked_loss on 2 DDP ranks (gloo, torchrun), each with 2 loader
workers handing one-row micro-batches over as numpy: the same loss and z-loss as the plain loss,
and a resume from the step-10 checkpoint equal to the run that never stopped, bit for bit."""

from __future__ import annotations

import pytest
import torch
from tests.distributed.support import TOTAL, metrics, run_job, tiny_config
from tests.support.training import checkpoint_dir, write_run

from lmstream.train import checkpoint as ckpt

pytestmark = [pytest.mark.distributed, pytest.mark.slow]


def test_z_loss_chunked_on_two_ranks_matches_and_resumes(corpus, tmp_path):
    runs = {}
    for chunked in (True, False):
        cfg = tiny_config(corpus, **{
            "optimizer.z_loss": 1e-3,
            "runtime.chunked_loss": chunked,
            "data.batch_size": 1,
            "data.num_workers": 2,
        })  # fmt: skip
        run = tmp_path / f"chunked-{chunked}"
        done = run_job("train", "--config", str(write_run(run, cfg)))
        assert done.returncode == 0, done.stdout
        runs[chunked] = run
    for key in ("loss", "z_loss"):
        got, want = metrics(runs[True], key), metrics(runs[False], key)
        assert sorted(got) == list(range(1, TOTAL + 1))
        assert all(got[s] == pytest.approx(want[s], rel=1e-5) for s in got), (key, got, want)
    resumed = tmp_path / "resumed"
    config = write_run(resumed, tiny_config(corpus, **{
        "optimizer.z_loss": 1e-3, "runtime.chunked_loss": True,
        "data.batch_size": 1, "data.num_workers": 2,
    }))  # fmt: skip
    mid = checkpoint_dir(runs[True], TOTAL // 2)
    done = run_job("train", "--config", str(config), "--resume", str(mid))
    assert done.returncode == 0, done.stdout
    for key in ("loss", "z_loss"):
        got, want = metrics(resumed, key), metrics(runs[True], key)
        assert sorted(got) == list(range(TOTAL // 2 + 1, TOTAL + 1))
        assert all(got[s] == want[s] for s in got), (key, got, want)
    a = ckpt.load_model_state(checkpoint_dir(resumed, TOTAL))[0]
    b = ckpt.load_model_state(checkpoint_dir(runs[True], TOTAL))[0]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
