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


def z_loss_step(micro_batches: list, chunk: int, z_loss: float) -> tuple:
    """One step's ``forward_backward`` with ``z_loss`` on a fresh ``tiny_model(64)`` whose loss
    is chunked by ``chunk`` rows (0 = full logits): (loss, logged z-loss, gradients)."""
    from lmstream.train.precision import build_precision
    from lmstream.train.step import forward_backward

    cpu = torch.device("cpu")
    model = tiny_model(64, 0)
    model.loss_chunk_tokens = chunk
    aux: dict = {}
    loss = forward_backward(model, micro_batches, build_precision("fp32", cpu), cpu, z_loss, aux)
    return loss, aux["z_loss"], [p.grad for p in model.parameters()]


def assert_same_step(got: tuple, want: tuple, grad_rtol: float) -> None:
    """Two :func:`z_loss_step` results agree: loss and z-loss to 1e-5, gradients to
    ``grad_rtol``."""
    (loss, z, grads), (want_loss, want_z, want_grads) = got, want
    torch.testing.assert_close(loss, want_loss, rtol=1e-5, atol=0)
    torch.testing.assert_close(z, want_z, rtol=1e-5, atol=0)
    for g, w in zip(grads, want_grads, strict=True):
        torch.testing.assert_close(g, w, rtol=grad_rtol, atol=1e-6)
