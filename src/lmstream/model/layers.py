"""The pieces of a pre-norm decoder block: norm, rotary embedding, attention, MLP, the block itself.

Shapes: B batch, T new tokens, S cached + new tokens, D hidden size, H query heads, K key/value
heads, E head size, I intermediate size.

Performance choices (the model is benchmarked against transformers' Llama):
- one fused q/k/v projection and one fused SwiGLU gate/up projection (fewer, larger matmuls);
- RoPE cos/sin tables precomputed once as non-persistent buffers, rotated on q and k together
  in a single elementwise pass;
- attention through ``F.scaled_dot_product_attention`` with ``is_causal`` (flash /
  memory-efficient kernels on GPU) and ``enable_gqa`` instead of materialising repeated k/v;
  with ``model.document_masking`` through ``attention_mask.attend`` (flex attention on CUDA).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lmstream.config import ModelConfig
from lmstream.model.attention_mask import DocumentMask, attend


def build_norm(cfg: ModelConfig) -> nn.Module:
    """LayerNorm (with bias, as GPT-2 / StarCoder2 / StableLM) or RMSNorm (as Llama)."""
    if cfg.norm == "rmsnorm":
        return nn.RMSNorm(cfg.hidden_size, eps=cfg.norm_eps)
    return nn.LayerNorm(cfg.hidden_size, eps=cfg.norm_eps)


# ------------------------------------------------------------------------------------ rotary


def rope_tables(
    head_dim: int, max_positions: int, theta: float, layout: str, device=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin, each (max_positions, head_dim), fp32, laid out to match :func:`apply_rope`.

    RoFormer (Su et al. 2021): pair i of a head rotates by angle pos * theta^(-2i/E). "standard"
    pairs element i with i + E/2 (Llama / GPT-NeoX); "interleaved" pairs 2i with 2i+1 (GPT-J).
    """
    inv_freq = 1.0 / theta ** (
        torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim
    )
    angles = torch.outer(torch.arange(max_positions, device=device, dtype=torch.float32), inv_freq)
    if layout == "interleaved":
        angles = angles.repeat_interleave(2, dim=-1)  # (P, E): a0 a0 a1 a1 ...
    else:
        angles = torch.cat([angles, angles], dim=-1)  # (P, E): a0 a1 ... a0 a1 ...
    return angles.cos(), angles.sin()


def _rotate(x: torch.Tensor, layout: str) -> torch.Tensor:
    """The 90-degree partner of each pair: (x1, x2) -> (-x2, x1)."""
    if layout == "interleaved":
        pairs = x.unflatten(-1, (-1, 2))  # (..., E/2, 2)
        return torch.stack([-pairs[..., 1], pairs[..., 0]], dim=-1).flatten(-2)
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, layout: str) -> torch.Tensor:
    """Rotate ``x`` (B, T, heads, E) by position; cos/sin are (T, E), or (B, T, E) when each
    row has its own positions (document masking), in x's dtype."""
    cos, sin = cos.unsqueeze(-2), sin.unsqueeze(-2)  # (T, 1, E) / (B, T, 1, E): over heads
    return x * cos + _rotate(x, layout) * sin


class RotaryEmbedding(nn.Module):
    """Holds the cos/sin tables as non-persistent buffers (rebuilt, never checkpointed)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.head_dim, self.max_positions = cfg.head_dim, cfg.max_position_embeddings
        self.theta, self.layout = cfg.theta, cfg.rope_layout
        cos, sin = rope_tables(self.head_dim, self.max_positions, self.theta, self.layout)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def reset_parameters(self) -> None:
        """Recompute the tables in place (after a meta-device model is materialised)."""
        cos, sin = rope_tables(
            self.head_dim, self.max_positions, self.theta, self.layout, device=self.cos.device
        )
        with torch.no_grad():
            self.cos.copy_(cos)
            self.sin.copy_(sin)

    def forward(
        self, start: int, length: int, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if start + length > self.max_positions:
            raise ValueError(
                f"sequence of {start + length} positions exceeds max_position_embeddings "
                f"({self.max_positions})"
            )
        # A (T, E) cast is cheap; it keeps q/k in the autocast dtype (bf16) for SDPA.
        return self.cos[start : start + length].to(dtype), self.sin[start : start + length].to(
            dtype
        )

    def at(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin (B, T, E) at per-token ``positions`` (B, T), each below max_positions."""
        return self.cos[positions].to(dtype), self.sin[positions].to(dtype)


# ------------------------------------------------------------------------------------ KV cache


class KVCache:
    """Preallocated keys/values for incremental decoding: (layers, B, K, max_len, E) each."""

    def __init__(
        self,
        cfg: ModelConfig,
        batch_size: int,
        max_len: int,
        device: torch.device | str,
        dtype: torch.dtype,
    ):
        shape = (cfg.num_layers, batch_size, cfg.kv_heads, max_len, cfg.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.max_len = max_len
        self.pos = 0  # tokens already cached; advanced by the model after each forward
        # Document masking finds documents in the token ids, so the cache keeps them too.
        self.tokens = (
            torch.zeros((batch_size, max_len), device=device, dtype=torch.long)
            if cfg.document_masking
            else None
        )

    def update(
        self, layer: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store this step's k/v (B, K, T, E); return all cached so far (B, K, S, E)."""
        end = self.pos + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions; {end} requested")
        self.k[layer, :, :, self.pos : end] = k
        self.v[layer, :, :, self.pos : end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]


# ----------------------------------------------------------------------------------- attention


class Attention(nn.Module):
    """Causal multi-head attention with grouped-query k/v heads and rotary positions."""

    def __init__(self, cfg: ModelConfig, layer_index: int):
        super().__init__()
        self.layer_index = layer_index
        self.n_heads, self.n_kv, self.head_dim = cfg.num_attention_heads, cfg.kv_heads, cfg.head_dim
        self.rope_layout = cfg.rope_layout
        self.dropout = cfg.attention_dropout
        # Rows: [q (H*E) | k (K*E) | v (K*E)]; export.py splits them in this order.
        self.qkv = nn.Linear(
            cfg.hidden_size, (self.n_heads + 2 * self.n_kv) * self.head_dim, bias=False
        )
        self.proj = nn.Linear(self.n_heads * self.head_dim, cfg.hidden_size, bias=False)
        # QK-norm (Dehghani et al. 2023; per head as Qwen3): RMSNorm over each head's q and k
        # before RoPE keeps attention logits bounded, so a high learning rate does not blow up.
        self.q_norm = nn.RMSNorm(self.head_dim, eps=cfg.norm_eps) if cfg.qk_norm else None
        self.k_norm = nn.RMSNorm(self.head_dim, eps=cfg.norm_eps) if cfg.qk_norm else None

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        cache: KVCache | None = None,
        documents: DocumentMask | None = None,
    ) -> torch.Tensor:
        B, T, _ = x.shape
        qkv = self.qkv(x).view(B, T, self.n_heads + 2 * self.n_kv, self.head_dim)  # (B, T, H+2K, E)
        # split, not slicing: the backward of a split is one concatenation, while each slice's
        # backward zero-fills a tensor of the whole input and copies into it (then adds).
        qk, v = qkv.split([self.n_heads + self.n_kv, self.n_kv], dim=2)  # (B, T, H+K / K, E)
        if self.q_norm is not None:
            q, k = qk.split([self.n_heads, self.n_kv], dim=2)
            qk = torch.cat([self.q_norm(q), self.k_norm(k)], dim=2)
        q, k = apply_rope(qk, cos, sin, self.rope_layout).split([self.n_heads, self.n_kv], dim=2)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H|K, T, E)

        if cache is not None and documents is not None:
            k, v = cache.update(self.layer_index, k, v)  # (B, K, S, E)
        if documents is not None:
            y = attend(
                q,
                k,
                v,
                documents,
                dropout=self.dropout if self.training else 0.0,
                enable_gqa=self.n_kv != self.n_heads,
            )  # (B, H, T, E)
            return self.proj(y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim))
        mask, causal = None, True
        if cache is not None:
            past = cache.pos
            k, v = cache.update(self.layer_index, k, v)  # (B, K, S, E)
            if past > 0:
                # SDPA's is_causal aligns the mask top-left; with a cached prefix query i sits at
                # position past + i, so it may see keys 0 .. past + i.
                causal = False
                if T > 1:
                    q_pos = torch.arange(past, past + T, device=x.device)[:, None]
                    mask = torch.arange(past + T, device=x.device)[None, :] <= q_pos  # (T, S)
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=causal,
            enable_gqa=self.n_kv != self.n_heads,
        )  # (B, H, T, E)
        return self.proj(y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim))


# ----------------------------------------------------------------------------------------- MLP


class MLP(nn.Module):
    """GELU (fc -> gelu -> proj, GPT-2) or SwiGLU (silu(gate) * up -> proj, Shazeer 2020)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.swiglu = cfg.activation == "swiglu"
        width = 2 * cfg.intermediate_size if self.swiglu else cfg.intermediate_size
        # For SwiGLU, rows are [gate (I) | up (I)] so one matmul feeds both halves.
        self.fc = nn.Linear(cfg.hidden_size, width, bias=False)
        self.proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)  # (B, T, I) or (B, T, 2I)
        if self.swiglu:
            gate, up = h.chunk(2, dim=-1)  # (B, T, I) each
            h = F.silu(gate) * up
        else:
            h = F.gelu(h)
        return self.proj(h)  # (B, T, D)


# --------------------------------------------------------------------------------------- block


class Block(nn.Module):
    """Pre-norm residual block: x + drop(attn(norm(x))), then x + drop(mlp(norm(x)))."""

    def __init__(self, cfg: ModelConfig, layer_index: int):
        super().__init__()
        self.attn_norm = build_norm(cfg)
        self.attn = Attention(cfg, layer_index)
        self.mlp_norm = build_norm(cfg)
        self.mlp = MLP(cfg)
        self.dropout = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        cache: KVCache | None = None,
        documents: DocumentMask | None = None,
    ) -> torch.Tensor:
        x = x + self.dropout(self.attn(self.attn_norm(x), cos, sin, cache, documents))  # (B, T, D)
        return x + self.dropout(self.mlp(self.mlp_norm(x)))  # (B, T, D)

    def init_weights(self, std: float, residual_std: float) -> None:
        """Normal(std) matrices; the two residual outputs get residual_std (GPT-2, sec. 2.3)."""
        for norm in (self.attn_norm, self.mlp_norm, self.attn.q_norm, self.attn.k_norm):
            if norm is not None:
                norm.reset_parameters()
        nn.init.normal_(self.attn.qkv.weight, mean=0.0, std=std)
        nn.init.normal_(self.mlp.fc.weight, mean=0.0, std=std)
        nn.init.normal_(self.attn.proj.weight, mean=0.0, std=residual_std)
        nn.init.normal_(self.mlp.proj.weight, mean=0.0, std=residual_std)


def residual_init_std(cfg: ModelConfig) -> float:
    """init_std / sqrt(2 * layers): each block adds two residual branches (GPT-2, Llama/OLMo)."""
    return cfg.init_std / math.sqrt(2 * cfg.num_layers)
