"""The chunked loss equals the plain cross-entropy and its gradients (train/loss.py), with the
logsumexp returned for an auxiliary term such as z-loss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tests.support.models import assert_same_step, tiny_model, z_loss_step

from lmstream.data.packing import Batch
from lmstream.train.device_defaults import loss_chunk_tokens, resolve_compile
from lmstream.train.loss import lm_loss


def _inputs(n=37, d=16, v=50, seed=0, ignore=(3, 4, 20)):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, d, generator=g, requires_grad=True)
    weight = torch.randn(v, d, generator=g, requires_grad=True)
    targets = torch.randint(0, v, (n,), generator=g)
    targets[list(ignore)] = -100
    return hidden, weight, targets


@pytest.mark.parametrize("chunk", [1, 8, 16, 37, 100])
def test_chunked_loss_and_gradients_equal_the_plain_ones(chunk):
    hidden, weight, targets = _inputs()
    plain = F.cross_entropy(F.linear(hidden, weight), targets, ignore_index=-100)
    plain.backward()
    want_h, want_w = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    loss, lse = lm_loss(hidden, weight, targets, chunk)
    loss.backward()
    torch.testing.assert_close(loss, plain, rtol=1e-5, atol=0)
    torch.testing.assert_close(hidden.grad, want_h, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(weight.grad, want_w, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(lse, torch.logsumexp(F.linear(hidden, weight), -1).detach())


def test_a_z_loss_on_the_returned_logsumexp_has_the_plain_gradient():
    hidden, weight, targets = _inputs(seed=1)
    logits = F.linear(hidden, weight)
    keep = targets != -100
    z = 1e-2 * (torch.logsumexp(logits, -1)[keep] ** 2).mean()
    (F.cross_entropy(logits, targets, ignore_index=-100) + z).backward()
    want_h, want_w = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    loss, lse = lm_loss(hidden, weight, targets, 8)
    (loss + 1e-2 * (lse[keep] ** 2).mean()).backward()
    torch.testing.assert_close(hidden.grad, want_h, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(weight.grad, want_w, rtol=1e-5, atol=1e-7)


def test_under_bf16_autocast_the_chunked_loss_matches_the_plain_one():
    hidden, weight, targets = _inputs(n=12, v=40, seed=2, ignore=(3,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain = F.cross_entropy(F.linear(hidden, weight).float(), targets, ignore_index=-100)
        loss, _ = lm_loss(hidden, weight, targets, 5)
    torch.testing.assert_close(loss, plain, rtol=1e-5, atol=0)
    plain.backward()
    want = weight.grad.clone()
    weight.grad = None
    loss.backward()
    assert weight.grad.dtype == torch.float32
    torch.testing.assert_close(weight.grad, want, rtol=2e-2, atol=1e-3)  # bf16 matmul inputs


def test_the_model_trains_the_same_with_the_chunked_loss():
    """The whole model (tied head, ignored targets): loss and every parameter's gradient."""
    x = torch.randint(0, 64, (3, 16))
    y = x.roll(-1, 1)
    y[0, -4:] = -100
    grads = []
    for chunk in (0, 7):
        model = tiny_model(64)
        model.loss_chunk_tokens = chunk
        logits, loss = model(x, y)
        assert (logits is None) == (chunk > 0)  # no (B, T, V) logits when chunked
        loss.backward()
        grads.append((loss.detach(), [p.grad for p in model.parameters()]))
    torch.testing.assert_close(grads[1][0], grads[0][0], rtol=1e-5, atol=0)
    for got, want in zip(grads[1][1], grads[0][1], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_a_z_loss_step_with_the_chunked_loss_equals_the_plain_one():
    """optimizer.z_loss with the chunked loss: the step's z-loss is computed from the logsumexp
    the chunks keep, so loss, logged z-loss and every gradient equal the plain path's, with
    ignored targets (left out of both means) and micro-batches of unequal counts."""
    torch.manual_seed(5)
    rows = torch.randint(0, 64, (4, 13))
    targets = rows[:, 1:].clone()
    targets[0, :5] = -100
    targets[3, -2:] = -100
    batches = [Batch(rows[:2, :-1], targets[:2]), Batch(rows[2:, :-1], targets[2:])]
    plain, chunked = (z_loss_step(batches, chunk, 1e-2) for chunk in (0, 7))
    assert plain[1] > 0
    assert_same_step(chunked, plain, grad_rtol=1e-5)


@pytest.mark.parametrize(
    ("setting", "device", "want"),
    [("auto", "cuda", True), ("auto", "cpu", False), (True, "cpu", True), (False, "cuda", False)],
)
def test_compile_and_chunked_loss_auto_resolve_per_device(setting, device, want):
    dev = torch.device(device)
    assert resolve_compile(setting, dev) is want
    assert (loss_chunk_tokens(setting, dev) > 0) is want
