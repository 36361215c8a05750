"""Shared builders of small models for the unit and integration tests: one base shape, each
test states only what it changes (so a test's shapes read as a diff from the base)."""

from __future__ import annotations

import torch

from lmstream.config import ModelConfig
from lmstream.model.transformer import Transformer


def tiny_model_config(**overrides) -> ModelConfig:
    """A 2-layer, 32-wide, 4-head model config (MHA, 32 positions); keyword arguments replace
    any field."""
    base = dict(
        hidden_size=32,
        intermediate_size=64,
        num_layers=2,
        num_attention_heads=4,
        max_position_embeddings=32,
    )
    return ModelConfig(**{**base, **overrides})


def tiny_model(vocab_size: int, seed: int = 0, **overrides) -> Transformer:
    """``tiny_model_config(**overrides)`` built with ``torch.manual_seed(seed)`` first, so the
    same arguments give the same weights."""
    torch.manual_seed(seed)
    return Transformer(tiny_model_config(**overrides), vocab_size)
