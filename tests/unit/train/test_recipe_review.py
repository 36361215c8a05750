"""Adversarial review of the training recipe (issue #15): each test reproduces a defect found
by using the recipe as a user would (a resume with a changed config, an edge value of a field)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tests.support.models import tiny_model

from lmstream.config import OptimizerConfig, SchedulerConfig, SpikeGuardConfig
from lmstream.errors import ConfigError
from lmstream.train.optim import build_optimizer, make_schedule, set_lr
from lmstream.train.spike_guard import SpikeGuard
from lmstream.train.state import TrainState, load_optimizer_state, optimizer_state

CPU = torch.device("cpu")


def _one_step(model, opt) -> None:
    tokens = torch.randint(0, 64, (2, 9))
    logits, _ = model(tokens[:, :-1], None)
    F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten()).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def test_muon_resumed_with_a_changed_learning_rate_uses_the_new_rates():
    """A resume loads the checkpoint's param groups; Muon's group must still follow the
    resumed config (muon_learning_rate and learning_rate), not the saved run's ratio."""
    if not hasattr(torch.optim, "Muon"):
        pytest.skip("torch.optim.Muon needs torch >= 2.9")
    model = tiny_model(64, 0, tie_embeddings=False)
    first = OptimizerConfig(algorithm="muon", learning_rate=1e-3, muon_learning_rate=0.02)
    opt = build_optimizer(model, first, first.learning_rate, CPU)
    _one_step(model, opt)
    saved = optimizer_state(model, opt)

    changed = OptimizerConfig(algorithm="muon", learning_rate=2e-3, muon_learning_rate=0.01)
    resumed = build_optimizer(model, changed, changed.learning_rate, CPU)
    load_optimizer_state(model, resumed, saved)
    set_lr(resumed, 2e-3)  # the schedule at its peak
    muon, adam_matrices, adam_vectors = resumed.param_groups
    assert muon["lr"] == pytest.approx(0.01)
    assert adam_matrices["lr"] == pytest.approx(2e-3) and adam_vectors["lr"] == pytest.approx(2e-3)
    assert resumed.state  # the moments themselves were restored


@pytest.mark.parametrize("algorithm", ["adam_w", "sgd"])
def test_a_resume_uses_the_resumed_configs_optimizer_settings(algorithm: str):
    """weight_decay, betas, eps and momentum changed in training.yaml before --resume apply:
    the checkpoint brings back the moments, not the saved run's settings (torch's
    load_state_dict restores both, so a changed weight_decay was silently ignored)."""
    model = tiny_model(64, 0, tie_embeddings=False)
    first = OptimizerConfig(algorithm=algorithm, learning_rate=1e-3, weight_decay=0.1,
                            beta1=0.9, beta2=0.95, epsilon=1e-8, momentum=0.9)  # fmt: skip
    opt = build_optimizer(model, first, first.learning_rate, CPU)
    _one_step(model, opt)
    saved = optimizer_state(model, opt)

    changed = OptimizerConfig(algorithm=algorithm, learning_rate=1e-3, weight_decay=0.01,
                              beta1=0.8, beta2=0.99, epsilon=1e-6, momentum=0.5)  # fmt: skip
    resumed = build_optimizer(model, changed, changed.learning_rate, CPU)
    expected = [{k: v for k, v in g.items() if k != "params"} for g in resumed.param_groups]
    load_optimizer_state(model, resumed, saved)
    assert [{k: v for k, v in g.items() if k != "params"} for g in resumed.param_groups] == expected
    assert resumed.state  # the moments themselves were restored


def test_an_epoch_sized_wsd_too_long_names_decay_fraction_when_that_is_what_was_set():
    """With total_epochs the length check runs once the epoch is measured; the user set
    decay_fraction, so that is the field the one line must name."""
    cfg = SchedulerConfig(
        strategy="warmup_stable_decay", warmup_steps=5, decay_fraction=1.0, total_epochs=1
    )
    with pytest.raises(ConfigError, match=r"^scheduler\.decay_fraction: "):
        make_schedule(cfg, 1e-3, 0.0, 12)


@pytest.mark.parametrize(
    "length", [{"decay_steps": 1}, {"decay_fraction": 0.01}, {"decay_steps": 10}]
)
def test_wsd_decay_reaches_min_lr_at_the_last_update(length):
    """The decay ends at min_lr on the run's last update (step total - 1), however short: a
    one-step decay (decay_steps 1, or a decay_fraction that rounds to one step) must not leave
    the whole run at the peak."""
    total = 40
    cfg = SchedulerConfig(
        strategy="warmup_stable_decay", warmup_steps=4, total_steps=total, **length
    )
    decay = cfg.decay_length(total)
    lr = make_schedule(cfg, 1e-3, 1e-4, total)
    assert lr(total - decay - 1) == 1e-3  # the last stable update
    assert lr(total - 1) == pytest.approx(1e-4)
    assert all(lr(s) < lr(s - 1) for s in range(total - decay, total))


def test_spike_guard_resumed_with_a_smaller_window_judges_by_that_window():
    """A checkpoint's history was kept for window 8; resumed with window 4, the statistics are
    those of the last 4 steps from the first check on (the config's window, not the saved one)."""
    state = TrainState()
    state.spike_history = [[v, 1.0] for v in (1.0, 5.0, 1.0, 5.0, 3.0, 3.01, 2.99, 3.0)]
    guard = SpikeGuard(SpikeGuardConfig(window=4, watch="loss"), state)
    # 3.5 is ~60 sigmas above the last four (3.0 +- 0.008) and under one sigma of all eight.
    assert guard.check(torch.tensor(3.5), torch.tensor(1.0))
    assert "last 4 steps" in guard.last_reason and len(state.spike_history) == 4
