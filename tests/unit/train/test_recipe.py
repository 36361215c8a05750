"""The training-recipe options (issue #15) at the unit level: QK-norm and z-loss change the loss
exactly as documented and leave it bit-identical when off; the WSD schedule at every step against
its formula; Muon's parameter split; the spike guard's decisions."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from tests.support.models import tiny_model

from lmstream.config import OptimizerConfig, SchedulerConfig, SpikeGuardConfig
from lmstream.data.packing import Batch
from lmstream.model.layers import apply_rope
from lmstream.train.loop import forward_backward
from lmstream.train.optim import build_optimizer, make_schedule
from lmstream.train.precision import build_precision
from lmstream.train.spike_guard import SpikeGuard
from lmstream.train.state import TrainState

CPU = torch.device("cpu")
FP32 = build_precision("fp32", CPU)


def _reference_attention(attn, x, cos, sin, qk_norm: bool) -> torch.Tensor:
    """Attention written out from the documentation: per-head RMS norm (x / rms * gain) of q
    and k before RoPE when ``qk_norm``, then causal softmax attention."""
    B, T, _ = x.shape
    H, E = attn.n_heads, attn.head_dim
    q, k, v = attn.qkv(x).view(B, T, 3 * H, E).split([H, H, H], dim=2)
    if qk_norm:
        eps = attn.q_norm.eps
        q = q * torch.rsqrt(q.pow(2).mean(-1, keepdim=True) + eps) * attn.q_norm.weight
        k = k * torch.rsqrt(k.pow(2).mean(-1, keepdim=True) + eps) * attn.k_norm.weight
    q, k = apply_rope(q, cos, sin, "standard"), apply_rope(k, cos, sin, "standard")
    y = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True
    )
    return attn.proj(y.transpose(1, 2).reshape(B, T, H * E))


@pytest.mark.parametrize("qk_norm", [False, True])
def test_qk_norm_is_a_per_head_rms_norm_before_rope(qk_norm):
    model = tiny_model(64, 0, qk_norm=qk_norm)
    attn = model.blocks[0].attn
    assert (attn.q_norm is not None) == qk_norm
    if qk_norm:  # trained gains differ from 1: the test must see them used
        with torch.no_grad():
            attn.q_norm.weight.uniform_(0.5, 1.5)
            attn.k_norm.weight.uniform_(0.5, 1.5)
    x = torch.randn(2, 7, 32)
    cos, sin = model.rope(0, 7, torch.float32)
    got = attn(x, cos, sin)
    want = _reference_attention(attn, x, cos, sin, qk_norm)
    if qk_norm:
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    else:  # off: exactly today's attention (same operations, bit for bit)
        assert torch.equal(got, want)


def test_qk_norm_off_keeps_the_parameters_and_on_changes_the_loss():
    plain, normed = tiny_model(64, 0), tiny_model(64, 0, qk_norm=True)
    extra = set(normed.state_dict()) - set(plain.state_dict())
    assert extra == {f"blocks.{i}.attn.{n}_norm.weight" for i in range(2) for n in "qk"}
    assert not set(plain.state_dict()) - set(normed.state_dict())
    normed.load_state_dict(plain.state_dict(), strict=False)  # same weights, gains 1
    rows = torch.randint(0, 64, (2, 9))
    a = plain(rows[:, :-1], rows[:, 1:])[1]
    b = normed(rows[:, :-1], rows[:, 1:])[1]
    assert torch.isfinite(b) and not torch.equal(a, b)


def _batches() -> list[Batch]:
    torch.manual_seed(3)
    rows = torch.randint(0, 64, (4, 9))
    targets = rows[:, 1:].clone()
    targets[0, :3] = -100  # ignored positions are left out of the z-loss mean too
    return [Batch(rows[:2, :-1], targets[:2]), Batch(rows[2:, :-1], targets[2:])]


def test_z_loss_value_and_gradient_match_the_formula():
    coef = 1e-2
    model = tiny_model(64, 0)
    aux: dict = {}
    loss = forward_backward(model, _batches(), FP32, CPU, coef, aux)
    grads = [p.grad.clone() for p in model.parameters()]
    # By hand: the same micro-batch weighting, ce + coef * mean over counted positions of
    # logsumexp(logits)^2.
    model.zero_grad()
    ce_parts, z_parts = [], []
    for b in _batches():
        logits, ce = model(b.inputs, b.targets)
        lse = torch.logsumexp(logits, dim=-1)[b.targets != -100]
        z = coef * lse.pow(2).mean()
        ((ce + z) / 2).backward()
        ce_parts.append(ce.detach())
        z_parts.append(z.detach())
    weights = [(b.targets != -100).sum().item() for b in _batches()]
    share = [w * 2 / sum(weights) for w in weights]
    want_ce = sum(c * s for c, s in zip(ce_parts, share, strict=True)) / 2
    want_z = sum(z * s for z, s in zip(z_parts, share, strict=True)) / 2
    torch.testing.assert_close(loss, want_ce)  # the returned loss stays the cross-entropy
    torch.testing.assert_close(aux["z_loss"], want_z)
    assert aux["z_loss"] > 0
    # Different micro-batch token counts: the hand version above weighted equally, so compare
    # gradients on the equal-count case instead.
    equal = [Batch(b.inputs, torch.where(b.targets == -100, 0, b.targets)) for b in _batches()]
    model.zero_grad()
    forward_backward(model, equal, FP32, CPU, coef, {})
    got = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    for b in equal:
        logits, ce = model(b.inputs, b.targets)
        ((ce + coef * torch.logsumexp(logits, -1).pow(2).mean()) / 2).backward()
    for g, p in zip(got, model.parameters(), strict=True):
        torch.testing.assert_close(g, p.grad, rtol=1e-5, atol=1e-7)
    assert any(not torch.equal(a, b) for a, b in zip(grads, got, strict=True))


def test_z_loss_off_is_bit_identical():
    runs = []
    for kwargs in ({}, {"z_loss": 0.0, "aux": {}}):
        model = tiny_model(64, 0)
        loss = forward_backward(model, _batches(), FP32, CPU, **kwargs)
        runs.append((loss, [p.grad for p in model.parameters()], kwargs.get("aux")))
    (a, ga, _), (b, gb, aux) = runs
    assert torch.equal(a, b) and all(torch.equal(x, y) for x, y in zip(ga, gb, strict=True))
    assert aux == {}


def _wsd(step, total, decay, shape, warm=4, peak=1e-3, floor=1e-4):
    """WSD from its definition, written independently of lmstream.train.optim."""
    if step < warm:
        return peak * (step + 1) / warm
    start = total - decay
    if step < start:
        return peak
    p = min(1.0, (step + 1 - start) / decay)
    return {
        "linear": peak - (peak - floor) * p,
        "cosine": floor + (peak - floor) * (1 + math.cos(math.pi * p)) / 2,
        "1-sqrt": floor + (peak - floor) * (1 - math.sqrt(p)),
    }[shape]


@pytest.mark.parametrize("shape", ["linear", "cosine", "1-sqrt"])
@pytest.mark.parametrize("length", [{"decay_steps": 10}, {"decay_fraction": 0.25}])
def test_wsd_at_every_step(shape, length):
    total = 40
    cfg = SchedulerConfig(
        strategy="warmup_stable_decay",
        warmup_steps=4,
        total_steps=total,
        decay_shape=shape,
        **length,
    )
    lr = make_schedule(cfg, 1e-3, 1e-4, total)
    for step in range(total + 5):
        assert lr(step) == pytest.approx(_wsd(step, total, 10, shape), rel=1e-12), step
    assert lr(29) == 1e-3 and lr(30) < 1e-3 and lr(total - 1) == pytest.approx(1e-4)
    # A longer run: the same step is still in the stable phase (the decay is anchored to the end).
    longer = make_schedule(cfg.model_copy(update={"total_steps": 80}), 1e-3, 1e-4, 80)
    assert longer(35) == 1e-3
    if "decay_fraction" in length:
        assert longer(59) == 1e-3 and longer(60) < 1e-3  # 25% of 80 = 20 steps of decay


def test_wsd_too_long_for_an_epoch_sized_run():
    cfg = SchedulerConfig(
        strategy="warmup_stable_decay", warmup_steps=5, decay_steps=10, total_epochs=1
    )
    with pytest.raises(Exception, match="scheduler.decay_steps"):
        make_schedule(cfg, 1e-3, 0.0, 12)


def test_muon_takes_the_block_matrices_and_adamw_the_rest():
    if not hasattr(torch.optim, "Muon"):
        pytest.skip("torch.optim.Muon needs torch >= 2.9")
    model = tiny_model(64, 0, tie_embeddings=False, qk_norm=True)
    opt = build_optimizer(model, OptimizerConfig(algorithm="muon", learning_rate=1e-3), 1e-3, CPU)
    names = {id(p): n for n, p in model.named_parameters()}
    muon, adam_matrices, adam_vectors = (
        [names[id(p)] for p in g["params"]] for g in opt.param_groups
    )
    assert sorted(muon) == sorted(
        f"blocks.{i}.{m}.weight"
        for i in range(2)
        for m in ("attn.qkv", "attn.proj", "mlp.fc", "mlp.proj")
    )
    assert sorted(adam_matrices) == ["embed.weight", "head.weight"]
    assert (
        all("norm" in n for n in adam_vectors) and len(adam_vectors) == 2 * 6 + 2
    )  # LayerNorm: gain and bias
    assert opt.param_groups[0]["lr"] == 0.02 and opt.param_groups[1]["lr"] == 1e-3
    assert opt.param_groups[0]["lr_scale"] == pytest.approx(20.0)


def test_spike_guard_skips_only_the_spike():
    state = TrainState()
    guard = SpikeGuard(SpikeGuardConfig(window=10, threshold_sigma=4.0), state)
    torch.manual_seed(0)
    values = [3.0 - 0.01 * i + 0.02 * float(torch.randn(())) for i in range(40)]
    values[25] *= 3  # the spike
    skipped = [
        i
        for i, v in enumerate(values)
        if guard.check(torch.tensor(v), torch.tensor(1.0 + 0.01 * (i % 3)))
    ]
    assert skipped == [25]
    assert len(state.spike_history) == 10  # the window, saved with TrainState
    norm_guard = SpikeGuard(SpikeGuardConfig(window=5, watch="grad_norm"), TrainState())
    checks = [
        norm_guard.check(torch.tensor(1.0), torch.tensor(n)) for n in [1, 1.1, 0.9, 1, 1.05, 50]
    ]
    assert checks == [False] * 5 + [True] and "grad_norm" in norm_guard.last_reason


def test_qk_norm_kv_cache_decoding_matches_the_full_forward():
    model = tiny_model(64, 0, qk_norm=True).eval()
    ids = torch.randint(0, 64, (2, 12))
    with torch.no_grad():
        full = model(ids)[0]
        cache = model.new_kv_cache(2)
        steps = [model(ids[:, :5], kv_cache=cache)[0]]
        steps += [model(ids[:, i : i + 1], kv_cache=cache)[0] for i in range(5, 12)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-5, atol=1e-5)


def test_a_spike_skip_under_fp16_keeps_the_loss_scale():
    """A spike is not an overflow: the GradScaler keeps its scale, and the next step runs."""
    from lmstream.train.loop import optimizer_step

    model, fp16 = tiny_model(64, 0), build_precision("fp16", CPU)
    opt = build_optimizer(model, OptimizerConfig(learning_rate=1e-2), 1e-2, CPU)
    guard = SpikeGuard(SpikeGuardConfig(window=2, watch="loss"), TrainState())
    guard.state.spike_history = [[4.0, 1.0], [4.01, 1.0]]
    scale = fp16.scaler.get_scale()
    before = [p.detach().clone() for p in model.parameters()]
    loss = forward_backward(model, _batches(), fp16, CPU)
    _, ok = optimizer_step(model, opt, fp16, loss * 100, 1e-2, 1.0, guard)
    assert not ok and guard.last_reason and fp16.scaler.get_scale() == scale
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    loss = forward_backward(model, _batches(), fp16, CPU)
    _, ok = optimizer_step(model, opt, fp16, loss, 1e-2, 1.0, guard)
    assert ok and not torch.equal(before[0], model.embed.weight)


def test_muon_on_a_torch_without_it_is_one_line(monkeypatch):
    """torch < 2.9 has no torch.optim.Muon (simulated: this torch has it)."""
    from lmstream.errors import ConfigError

    monkeypatch.delattr(torch.optim, "Muon", raising=False)
    cfg = OptimizerConfig(algorithm="muon", learning_rate=1e-3)
    with pytest.raises(ConfigError, match=r"^optimizer.algorithm: muon needs torch >= 2.9") as err:
        build_optimizer(tiny_model(64, 0), cfg, 1e-3, CPU)
    assert "\n" not in str(err.value)
