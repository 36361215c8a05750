"""Optimizer groups, LR schedules against their formulas, and gradient accumulation."""

from __future__ import annotations

import math

import pytest
import torch
from tests.support.models import tiny_model

from lmstream.config import OptimizerConfig, SchedulerConfig
from lmstream.data.packing import Batch
from lmstream.model.transformer import Transformer
from lmstream.train.loop import forward_backward, optimizer_step
from lmstream.train.optim import build_optimizer, lr_at, make_schedule, parameter_groups
from lmstream.train.precision import build_precision

PEAK, FLOOR, WARM, TOTAL = 1e-3, 1e-4, 10, 110


def _lr(step: int, strategy: str) -> float:
    return lr_at(
        step, strategy=strategy, peak_lr=PEAK, min_lr=FLOOR, warmup_steps=WARM, total_steps=TOTAL
    )


@pytest.mark.parametrize(
    "strategy", ["cosine_with_warmup", "linear_with_warmup", "constant_with_warmup"]
)
def test_warmup_is_linear_to_the_peak(strategy):
    assert _lr(0, strategy) == pytest.approx(PEAK / WARM)
    assert _lr(4, strategy) == pytest.approx(PEAK * 5 / WARM)
    assert _lr(WARM - 1, strategy) == pytest.approx(PEAK)
    assert _lr(WARM, strategy) == pytest.approx(PEAK)


def test_cosine_at_key_steps():
    mid = WARM + (TOTAL - WARM) // 2
    assert _lr(mid, "cosine_with_warmup") == pytest.approx((PEAK + FLOOR) / 2)
    quarter = WARM + (TOTAL - WARM) // 4
    expected = FLOOR + (PEAK - FLOOR) * 0.5 * (1 + math.cos(math.pi * 0.25))
    assert _lr(quarter, "cosine_with_warmup") == pytest.approx(expected)
    assert _lr(TOTAL, "cosine_with_warmup") == pytest.approx(FLOOR)
    assert _lr(TOTAL + 50, "cosine_with_warmup") == pytest.approx(FLOOR)  # floor after the end


def test_linear_and_constant_at_key_steps():
    mid = WARM + (TOTAL - WARM) // 2
    assert _lr(mid, "linear_with_warmup") == pytest.approx((PEAK + FLOOR) / 2)
    assert _lr(TOTAL, "linear_with_warmup") == pytest.approx(FLOOR)
    assert _lr(mid, "constant_with_warmup") == PEAK
    assert _lr(TOTAL * 3, "constant_with_warmup") == PEAK


def test_schedule_without_warmup_starts_at_peak_and_checks_length():
    cfg = SchedulerConfig(strategy="cosine_with_warmup", warmup_steps=0, total_steps=100)
    lr = make_schedule(cfg, PEAK, 0.0, 100)
    assert lr(0) == pytest.approx(PEAK) and lr(100) == pytest.approx(0.0)
    with pytest.raises(Exception, match="warmup_steps"):
        make_schedule(SchedulerConfig(warmup_steps=50, total_epochs=1), PEAK, 0.0, 20)


def _model(seed: int = 0) -> Transformer:
    return tiny_model(64, seed, max_position_embeddings=16)


def test_weight_decay_on_matrices_only():
    model = _model()
    decay, no_decay = parameter_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and decay["params"]
    assert all(p.dim() < 2 for p in no_decay["params"]) and no_decay["params"]
    names = {id(p): n for n, p in model.named_parameters()}
    assert "embed.weight" in {names[id(p)] for p in decay["params"]}
    assert any("norm" in names[id(p)] for p in no_decay["params"])
    count = len(decay["params"]) + len(no_decay["params"])
    assert count == len(list(model.parameters()))


def test_sgd_and_adamw_are_built():
    model = _model()
    cpu = torch.device("cpu")
    adam = build_optimizer(model, OptimizerConfig(learning_rate=1e-3, weight_decay=0.1), 1e-3, cpu)
    assert isinstance(adam, torch.optim.AdamW) and adam.defaults["betas"] == (0.9, 0.95)
    sgd = build_optimizer(model, OptimizerConfig(algorithm="sgd", learning_rate=0.1), 0.1, cpu)
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["momentum"] == 0.9


def test_accumulation_4x2_equals_one_batch_of_8():
    torch.manual_seed(1)
    rows = torch.randint(0, 64, (8, 13))
    whole = [Batch.from_rows(rows)]
    parts = [Batch.from_rows(rows[i : i + 2]) for i in range(0, 8, 2)]
    cpu, fp32 = torch.device("cpu"), build_precision("fp32", torch.device("cpu"))
    results = []
    for micro in (whole, parts):
        model = _model()
        opt = build_optimizer(
            model, OptimizerConfig(learning_rate=1e-2, weight_decay=0.1), 1e-2, cpu
        )
        loss = forward_backward(model, micro, fp32, cpu)
        grads = [p.grad.clone() for p in model.parameters()]
        norm, ok = optimizer_step(model, opt, fp32, loss, 1e-2, max_grad_norm=0.5)
        assert ok
        results.append((loss, norm, grads, [p.detach().clone() for p in model.parameters()]))
    (loss_a, norm_a, grads_a, params_a), (loss_b, norm_b, grads_b, params_b) = results
    torch.testing.assert_close(loss_a, loss_b, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(norm_a, norm_b, rtol=1e-5, atol=1e-6)
    assert norm_a > 0.5  # clipping was active, and identical in both
    for a, b in zip(grads_a, grads_b, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)
    # AdamW's first update is ~lr * sign(grad): tiny gradients amplify float noise a little.
    for a, b in zip(params_a, params_b, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert not torch.equal(params_a[0], _model().embed.weight)  # the update happened


def test_nonfinite_loss_skips_the_update():
    model = _model()
    cpu, fp32 = torch.device("cpu"), build_precision("fp32", torch.device("cpu"))
    opt = build_optimizer(model, OptimizerConfig(learning_rate=1e-2), 1e-2, cpu)
    before = [p.detach().clone() for p in model.parameters()]
    batch = Batch.from_rows(torch.randint(0, 64, (2, 9)))
    loss = forward_backward(model, [batch], fp32, cpu)
    _, ok = optimizer_step(model, opt, fp32, loss * float("nan"), 1e-2, 1.0)
    assert not ok
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("name", ["bf16", "fp16"])
def test_low_precision_step_updates_fp32_master_weights(name, recwarn):
    model = _model()
    cpu = torch.device("cpu")
    precision = build_precision(name, cpu)
    assert (precision.scaler is not None) == (name == "fp16")
    opt = build_optimizer(model, OptimizerConfig(learning_rate=1e-2), 1e-2, cpu)
    before = model.embed.weight.detach().clone()
    batch = Batch.from_rows(torch.randint(0, 64, (2, 9)))
    loss = forward_backward(model, [batch], precision, cpu)
    _, ok = optimizer_step(model, opt, precision, loss, 1e-2, 1.0)
    assert ok and torch.isfinite(loss)
    assert model.embed.weight.dtype == torch.float32
    assert not torch.equal(before, model.embed.weight)
