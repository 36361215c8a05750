"""PaLM's z-loss (Chowdhery et al. 2022, sec. 5): ``z_loss * mean(log(Z)^2)``, Z the softmax
normaliser of each counted position. It pulls log Z towards 0, which keeps the output logits
from drifting to large magnitudes where bf16 softmax loses precision and training diverges;
PaLM used 1e-4. Averaged over the same positions as the cross-entropy (targets != -100).

It takes log Z (the logsumexp of each position's logits) rather than the logits, so the chunked
loss (train/loss.py), which never holds the full logits but keeps every row's logsumexp, feeds it
the same values as the plain path, at no second pass over the vocabulary.
"""

from __future__ import annotations

import torch


def z_loss_term(lse: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """mean(lse^2) over counted targets, fp32; ``lse`` the fp32 logsumexp of each position's
    logits, the same shape as ``targets`` (B, T)."""
    counted = targets != -100
    return (lse.square() * counted).sum() / counted.sum().clamp(min=1)
