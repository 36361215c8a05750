"""Peak memory per device, estimated before a run: weights, gradients, optimizer state and
activations at a micro-batch, under activation checkpointing and FSDP sharding.

The activation term counts the tensors a pre-norm block keeps for backward, per token: with
SDPA's fused attention no (T, T) score matrix is kept (Korthikanti et al. 2022, "Reducing
Activation Recomputation", Table 2, less the 5as/h term). It is an estimate to choose settings
by (goal: within 15% of the measured peak, checked by bench/gpu_1b.py), not an allocator model.
"""

from __future__ import annotations

from dataclasses import dataclass

from lmstream.config import TrainingConfig

GB = 1e9
# CUDA context, cuBLAS workspaces and allocator slack, measured roughly on H100/H200.
OVERHEAD_BYTES = 1.5 * GB


@dataclass
class MemoryPlan:
    weights: float  # bytes per device, each term
    gradients: float
    optimizer: float
    activations: float
    overhead: float

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer + self.activations + self.overhead

    def lines(self, device_bytes: float | None) -> list[str]:
        parts = ", ".join(
            f"{name} {getattr(self, name) / GB:.2f}"
            for name in ("weights", "gradients", "optimizer", "activations", "overhead")
        )
        fits = ""
        if device_bytes:
            fits = f" of the device's {device_bytes / GB:.1f} GB"
        return [f"memory plan per device: {self.total / GB:.2f} GB{fits} ({parts}; GB)"]


def activation_bytes_per_row(cfg: TrainingConfig, chunked_loss: bool) -> float:
    """Bytes kept for backward per sequence (row) of the micro-batch."""
    m, T = cfg.model, cfg.data.sequence_length
    h, i, vocab = m.hidden_size, m.intermediate_size, m.vocab_size or 50_304
    kv = h * (m.num_key_value_heads or m.num_attention_heads) // m.num_attention_heads
    low = 4 if cfg.runtime.precision == "fp32" else 2  # matmul inputs/outputs under autocast
    mlp = 4 * i if m.activation == "swiglu" else 2 * i  # gate, up, act(gate), product
    # Per layer: two norm inputs (fp32 residual), two normed copies, q k v, attention output
    # (+ its fp32 logsumexp per head), the MLP's intermediates.
    per_layer = T * (2 * 4 * h + low * (2 * h + h + 2 * kv + h + mlp) + 4 * m.num_attention_heads)
    if cfg.runtime.activation_checkpointing:
        # Each block keeps its input; one block's activations are alive while it recomputes.
        layers = m.num_layers * T * 4 * h + per_layer
    else:
        layers = m.num_layers * per_layer
    # The loss: plain keeps the logits (low precision) plus their fp32 copy and log-softmax;
    # chunked keeps none per row (one chunk's worth is added by plan_memory).
    head = 0.0 if chunked_loss else T * vocab * (low + 4 + 4)
    return layers + head + T * 4 * h  # + the final norm's input


def plan_memory(
    cfg: TrainingConfig,
    num_parameters: int,
    micro_batch: int,
    world_size: int = 1,
    fsdp: bool = False,
    chunked_loss: bool = False,
    loss_chunk_tokens: int = 4096,
) -> MemoryPlan:
    """The estimate for one device. AdamW keeps two fp32 moments; FSDP shards weights,
    gradients and optimizer state over ``world_size`` but gathers one block at a time."""
    n = num_parameters
    shards = world_size if fsdp else 1
    weights = 4.0 * n / shards
    if fsdp:  # one gathered block in the compute dtype, the next prefetched
        m = cfg.model
        weights += 2 * 2.0 * n / max(m.num_layers, 1)
    vocab = cfg.model.vocab_size or 50_304
    acts = micro_batch * activation_bytes_per_row(cfg, chunked_loss)
    if chunked_loss:
        acts += min(loss_chunk_tokens, micro_batch * cfg.data.sequence_length) * vocab * 4 * 2
    return MemoryPlan(weights, 4.0 * n / shards, 8.0 * n / shards, acts, OVERHEAD_BYTES)


def advice(cfg: TrainingConfig, plan: MemoryPlan, limit_bytes: float, world_size: int) -> str:
    """What to change when ``plan`` does not fit ``limit_bytes`` (one line), else ''."""
    if plan.total <= limit_bytes:
        return ""
    rt, data = cfg.runtime, cfg.data
    if plan.activations > plan.weights + plan.gradients + plan.optimizer:
        if not rt.activation_checkpointing:
            return (
                "will not fit: set runtime.activation_checkpointing: true, or lower "
                "data.batch_size and raise data.gradient_accumulation_steps to keep the batch"
            )
        if data.batch_size > 1:
            return (
                "will not fit: lower data.batch_size and raise "
                "data.gradient_accumulation_steps to keep the batch"
            )
    if world_size > 1 and rt.parallelism != "fsdp":
        return "will not fit: set runtime.parallelism: fsdp to shard weights and optimizer state"
    return "will not fit: use more GPUs (FSDP shards the states) or a smaller model"
