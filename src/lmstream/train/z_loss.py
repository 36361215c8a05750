"""PaLM's z-loss (Chowdhery et al. 2022, sec. 5): ``z_loss * mean(log(Z)^2)``, Z the softmax
normaliser of each counted position. It pulls log Z towards 0, which keeps the output logits
from drifting to large magnitudes where bf16 softmax loses precision and training diverges;
PaLM used 1e-4. Averaged over the same positions as the cross-entropy (targets != -100).
"""

from __future__ import annotations

import torch


def z_loss_term(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """mean(logsumexp(logits)^2) over counted targets, fp32; logits (B, T, V), targets (B, T)."""
    lse = torch.logsumexp(logits.float(), dim=-1)  # (B, T)
    counted = targets != -100
    return (lse.square() * counted).sum() / counted.sum().clamp(min=1)
