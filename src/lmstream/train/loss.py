"""The language-model loss from the last hidden states, in chunks over the tokens.

The plain loss builds the (B*T, V) logits, then an fp32 copy for the log-softmax, and keeps both
for backward: at micro-batch 16 x 2048 and a 50k vocabulary that is 6.5 GB in fp32 alone, which
caps the micro-batch. :class:`ChunkedCrossEntropy` projects ``chunk_tokens`` rows at a time,
keeps only each row's logsumexp (4 bytes a token) and recomputes the chunk's logits in backward,
as Liger-Kernel's fused linear cross-entropy does (Hsu et al. 2024), in plain PyTorch. The
matmuls run in the same dtype as under autocast (bf16 inputs, bf16 logits, fp32 softmax), so
loss and gradients equal the plain path's up to float summation order.

The logsumexp of every token is returned beside the loss, differentiable, so an auxiliary term
on it (PaLM's z-loss, ``1e-4 * lse**2``) costs no second pass over the vocabulary.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE = -100


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype F.linear would compute in here: autocast's when it is on, else the input's."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


class ChunkedCrossEntropy(torch.autograd.Function):
    """(sum of token losses, logsumexp per token) from hidden (N, D), weight (V, D), targets (N,)."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk_tokens: int, dtype: torch.dtype):
        h, w = hidden.to(dtype), weight.to(dtype)
        lse = torch.empty(h.shape[0], device=h.device, dtype=torch.float32)
        total = torch.zeros((), device=h.device, dtype=torch.float32)
        for start in range(0, h.shape[0], chunk_tokens):
            rows = slice(start, start + chunk_tokens)
            logits = (h[rows] @ w.t()).float()  # (C, V): the only logits alive at a time
            lse[rows] = torch.logsumexp(logits, dim=-1)
            t = targets[rows]
            keep = t != IGNORE
            picked = logits.gather(1, t.clamp(min=0).unsqueeze(1)).squeeze(1)
            total += ((lse[rows] - picked) * keep).sum()
        ctx.save_for_backward(hidden, weight, targets, lse)
        ctx.chunk_tokens, ctx.dtype = chunk_tokens, dtype
        return total, lse

    @staticmethod
    def backward(ctx, grad_total, grad_lse):
        hidden, weight, targets, lse = ctx.saved_tensors
        h, w = hidden.to(ctx.dtype), weight.to(ctx.dtype)
        grad_h = torch.empty_like(h) if ctx.needs_input_grad[0] else None
        grad_w = torch.zeros(w.shape, device=w.device, dtype=torch.float32)
        for start in range(0, h.shape[0], ctx.chunk_tokens):
            rows = slice(start, start + ctx.chunk_tokens)
            logits = (h[rows] @ w.t()).float()
            probs = torch.exp(logits - lse[rows].unsqueeze(1))  # softmax, (C, V)
            t = targets[rows]
            keep = (t != IGNORE).float()
            # d(loss_i)/d(logits_i) = softmax - onehot(target); d(lse_i)/d(logits_i) = softmax.
            scale = grad_total * keep
            if grad_lse is not None:
                scale = scale + grad_lse[rows]
            g = probs * scale.unsqueeze(1)
            g.scatter_add_(1, t.clamp(min=0).unsqueeze(1), (-grad_total * keep).unsqueeze(1))
            g = g.to(ctx.dtype)  # as autocast's backward of a bf16 linear receives it
            if grad_h is not None:
                grad_h[rows] = g @ w
            grad_w += (g.t() @ h[rows]).float()
        grad_h = grad_h.to(hidden.dtype) if grad_h is not None else None
        return grad_h, grad_w.to(weight.dtype), None, None, None


def lm_loss(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk_tokens: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean cross-entropy over the counted (not -100) targets, and the logsumexp of every
    token's logits (N,), both differentiable.

    Args:
        hidden: (..., D) final hidden states (after the last norm).
        weight: (V, D) vocabulary head (the embedding when tied).
        targets: (...) next-token ids, -100 to ignore a position.
        chunk_tokens: rows projected at a time; 0 = the plain loss (full logits at once).
    """
    h = hidden.reshape(-1, hidden.shape[-1])
    t = targets.reshape(-1)
    count = (t != IGNORE).sum()
    if chunk_tokens <= 0:
        logits = F.linear(h, weight).float()  # fp32: bf16 log-softmax loses ~2 digits
        lse = torch.logsumexp(logits, dim=-1)
        return F.cross_entropy(logits, t, ignore_index=IGNORE), lse
    total, lse = ChunkedCrossEntropy.apply(h, weight, t, chunk_tokens, _compute_dtype(h))
    # As F.cross_entropy: nothing counted gives NaN (0/0), which the loop's check then skips,
    # and a zero gradient (a plain 0/0 would send NaN into every gradient of the step).
    loss = torch.where(count > 0, total / count.clamp(min=1), torch.nan)
    return loss, lse
