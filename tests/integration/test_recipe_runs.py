"""The training-recipe options (issue #15) through the real CLI on a tiny CPU run: Muon trains
and resumes bit for bit, WSD resumed with more steps continues its stable phase, the spike guard
skips an injected spike and nothing else (also after a resume), QK-norm and z-loss train, log
and evaluate."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tests.support.training import (
    checkpoint_dir,
    kjv_corpus_fixture,
    logged,
    tiny_training_config,
    train_in_process,
    write_run,
)

from lmstream.train import checkpoint as ckpt
from lmstream.train.faults import SPIKE_ENV
from lmstream.train.optim import lr_at

pytestmark = pytest.mark.slow


corpus = kjv_corpus_fixture(200, 400)


def config(corpus: Path, total: int, **overrides) -> dict:
    """The shared tiny run with dropout (its RNG must resume too) and a checkpoint every 4 steps."""
    return tiny_training_config(corpus, total, **{
        "model.residual_dropout": 0.1,
        "runtime.checkpoint": {"every_n_steps": 4, "max_keep": 5, "async_save": False},
        **overrides,
    })  # fmt: skip


def weights(run_dir: Path, step: int) -> dict[str, torch.Tensor]:
    return ckpt.load_model_state(checkpoint_dir(run_dir, step))[0]


def resume(reference: Path, step: int, run_dir: Path, cfg: dict) -> int:
    """Continue ``reference``'s checkpoint of ``step`` in a new run folder holding ``cfg``."""
    mid = checkpoint_dir(reference, step)
    return train_in_process(write_run(run_dir, cfg), "--resume", str(mid))


@pytest.mark.skipif(not hasattr(torch.optim, "Muon"), reason="torch.optim.Muon: torch >= 2.9")
def test_muon_trains_and_resumes_bit_exact(corpus, tmp_path):
    cfg = config(corpus, 12, **{"optimizer.algorithm": "muon", "optimizer.learning_rate": 3e-3})
    reference = tmp_path / "reference"
    assert train_in_process(write_run(reference, cfg)) == 0
    loss = logged(reference, "loss")
    assert loss[12] < loss[1] - 0.5, loss  # it learns
    assert resume(reference, 4, tmp_path / "resumed", cfg) == 0
    got = logged(tmp_path / "resumed", "loss")
    assert sorted(got) == list(range(5, 13)) and all(got[s] == loss[s] for s in got)
    a, b = weights(tmp_path / "resumed", 12), weights(reference, 12)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_wsd_resumed_with_more_steps_continues_the_stable_phase(corpus, tmp_path):
    wsd = {
        "scheduler.strategy": "warmup_stable_decay",
        "scheduler.decay_steps": 4,
        "scheduler.warmup_steps": 2,
        "scheduler.min_lr": 3e-4,
    }
    first = tmp_path / "first"
    assert train_in_process(write_run(first, config(corpus, 12, **wsd))) == 0
    lr = logged(first, "lr")  # step s logs the lr of update s - 1

    def formula(step: int, total: int) -> float:
        return lr_at(step - 1, strategy="warmup_stable_decay", peak_lr=3e-3, min_lr=3e-4,
                     warmup_steps=2, total_steps=total, decay_steps=4)  # fmt: skip

    assert lr == pytest.approx({s: formula(s, 12) for s in range(1, 13)}, rel=1e-12)
    assert lr[9] < 3e-3 and lr[12] == pytest.approx(3e-4)  # updates 8-11 decay, to min_lr
    # Extended from its step-8 checkpoint (still stable) to 24 steps: stable until 20, then decay.
    assert resume(first, 8, tmp_path / "longer", config(corpus, 24, **wsd)) == 0
    longer = logged(tmp_path / "longer", "lr")
    assert sorted(longer) == list(range(9, 25))
    assert longer == pytest.approx({s: formula(s, 24) for s in range(9, 25)}, rel=1e-12)
    assert all(longer[s] == 3e-3 for s in range(9, 21)) and longer[24] < 1e-3


def test_spike_guard_skips_the_injected_spike_and_nothing_else(
    corpus, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv(SPIKE_ENV, "14")  # update attempt 14's loss x 100
    # Loss only: over so short a window the gradient norm of 4-sequence batches is too noisy to
    # judge (attempt 13 here has a norm 8x the mean, a real outlier the default "both" skips).
    guard = {"runtime.spike_guard": {"window": 8, "threshold_sigma": 6.0, "watch": "loss"}}
    reference = tmp_path / "reference"
    assert train_in_process(write_run(reference, config(corpus, 20, **guard))) == 0
    out = capsys.readouterr().out
    assert "step 14: loss" in out and "update skipped (1 skipped in total)" in out, out
    skipped = logged(reference, "skipped_steps")
    assert skipped[13] == 0 and skipped[14] == 1 and skipped[20] == 1
    # The window (8 steps) lives in the checkpoint: resumed at step 12, the same spike is met
    # with the same history and skipped, and the run continues bit for bit.
    assert resume(reference, 12, tmp_path / "resumed", config(corpus, 20, **guard)) == 0
    assert "step 14: loss" in capsys.readouterr().out
    got, want = logged(tmp_path / "resumed", "loss"), logged(reference, "loss")
    assert all(got[s] == want[s] for s in got) and sorted(got) == list(range(13, 21))


def test_qk_norm_and_z_loss_train_log_and_evaluate(corpus, tmp_path):
    run_dir = tmp_path / "run"
    cfg = config(corpus, 8, **{"model.qk_norm": True, "optimizer.z_loss": 1e-3})
    assert train_in_process(write_run(run_dir, cfg)) == 0
    z, loss = logged(run_dir, "z_loss"), logged(run_dir, "loss")
    assert sorted(z) == list(range(1, 9)) and all(0 < v < loss[s] for s, v in z.items())
    assert logged(run_dir, "val_loss")
    state = weights(run_dir, 8)
    assert "blocks.0.attn.q_norm.weight" in state and "blocks.1.attn.k_norm.weight" in state
