"""Settings whose best value depends on the device: ``auto`` resolved once, at build time.

torch.compile pays for itself on CUDA (fused element-wise kernels: 51-54% vs 42% MFU on the
1B seed model, BENCHMARKS.md) but on CPU its start-up minutes exceed what a small run saves.
The chunked loss (train/loss.py) trades one more head matmul in backward for never holding the
full fp32 logits: worth it where memory bounds the micro-batch (GPUs), not on CPU.
"""

from __future__ import annotations

import torch

# Rows per chunk of the loss: a 50k vocabulary's fp32 logits of 4096 rows are 0.8 GB, big
# enough that the chunk's matmul still runs near the device's peak.
LOSS_CHUNK_TOKENS = 4096


def on_for(setting: str | bool, device: torch.device) -> bool:
    """``true``/``false`` as written; ``auto`` = on for CUDA, off elsewhere."""
    if setting == "auto":
        return device.type == "cuda"
    return bool(setting)


def resolve_compile(setting: str | bool, device: torch.device) -> bool:
    """runtime.compile on ``device``."""
    return on_for(setting, device)


def loss_chunk_tokens(setting: str | bool, device: torch.device) -> int:
    """The model's ``loss_chunk_tokens`` for runtime.chunked_loss on ``device`` (0 = plain)."""
    return LOSS_CHUNK_TOKENS if on_for(setting, device) else 0
