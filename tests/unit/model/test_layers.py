"""The model's layers against reference formulas: RoPE, GQA attention, MLPs, norms, KV cache."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from tests.support.models import tiny_model_config

from lmstream.config import ModelConfig
from lmstream.model.layers import MLP, Attention, KVCache, apply_rope, build_norm, rope_tables


def _cfg(**overrides) -> ModelConfig:
    base = dict(intermediate_size=48, num_key_value_heads=2, max_position_embeddings=64)
    return tiny_model_config(**{**base, **overrides})


def _rope_reference(x: torch.Tensor, theta: float, layout: str) -> torch.Tensor:
    """RoFormer eq. 34 written pair by pair with complex numbers: x (T, heads, E)."""
    T, _, E = x.shape
    out = torch.empty_like(x, dtype=torch.float64)
    for pos in range(T):
        for i in range(E // 2):
            angle = pos * theta ** (-2.0 * i / E)
            a, b = (2 * i, 2 * i + 1) if layout == "interleaved" else (i, i + E // 2)
            z = torch.complex(x[pos, :, a].double(), x[pos, :, b].double()) * complex(
                math.cos(angle), math.sin(angle)
            )
            out[pos, :, a], out[pos, :, b] = z.real, z.imag
    return out


@pytest.mark.parametrize("layout", ["standard", "interleaved"])
@pytest.mark.parametrize("theta", [10000.0, 500.0])
def test_rope_matches_the_reference_formula(layout: str, theta: float) -> None:
    torch.manual_seed(0)
    x = torch.randn(1, 7, 3, 8)  # (B, T, heads, E)
    cos, sin = rope_tables(8, 16, theta, layout)
    got = apply_rope(x, cos[:7], sin[:7], layout)[0]
    torch.testing.assert_close(
        got.double(), _rope_reference(x[0], theta, layout), atol=1e-5, rtol=0
    )


def test_rope_scores_depend_only_on_relative_position() -> None:
    torch.manual_seed(0)
    q, k = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)
    cos, sin = rope_tables(16, 64, 10000.0, "standard")

    def score(m: int, n: int) -> float:
        qm = apply_rope(q, cos[m : m + 1], sin[m : m + 1], "standard")
        kn = apply_rope(k, cos[n : n + 1], sin[n : n + 1], "standard")
        return float((qm * kn).sum())

    assert score(10, 3) == pytest.approx(score(40, 33), abs=1e-4)
    assert score(10, 3) != pytest.approx(score(10, 4), abs=1e-4)


def _attention_reference(attn: Attention, x: torch.Tensor, cos, sin) -> torch.Tensor:
    """Explicit softmax attention with k/v heads repeated for each query group."""
    B, T, _ = x.shape
    H, K, E = attn.n_heads, attn.n_kv, attn.head_dim
    q, k, v = attn.qkv(x).split([H * E, K * E, K * E], dim=-1)
    q = apply_rope(q.view(B, T, H, E), cos, sin, "standard").transpose(1, 2)
    k = apply_rope(k.view(B, T, K, E), cos, sin, "standard").transpose(1, 2)
    v = v.view(B, T, K, E).transpose(1, 2)
    k, v = k.repeat_interleave(H // K, dim=1), v.repeat_interleave(H // K, dim=1)
    scores = q @ k.transpose(-1, -2) / math.sqrt(E)
    scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    y = scores.softmax(-1) @ v  # (B, H, T, E)
    return attn.proj(y.transpose(1, 2).reshape(B, T, H * E))


@pytest.mark.parametrize("kv_heads", [4, 2, 1])
def test_attention_matches_explicit_grouped_query_attention(kv_heads: int) -> None:
    torch.manual_seed(0)
    cfg = _cfg(num_key_value_heads=kv_heads)
    attn = Attention(cfg, 0)
    assert attn.qkv.weight.shape == ((4 + 2 * kv_heads) * 8, 32)
    x = torch.randn(2, 9, 32)
    cos, sin = rope_tables(8, 64, 10000.0, "standard")
    got = attn(x, cos[:9], sin[:9])
    torch.testing.assert_close(
        got, _attention_reference(attn, x, cos[:9], sin[:9]), atol=1e-5, rtol=1e-5
    )


def test_attention_is_causal() -> None:
    torch.manual_seed(0)
    attn = Attention(_cfg(), 0)
    cos, sin = rope_tables(8, 64, 10000.0, "standard")
    x = torch.randn(1, 8, 32)
    changed = x.clone()
    changed[:, 5:] = torch.randn(1, 3, 32)
    a, b = attn(x, cos[:8], sin[:8]), attn(changed, cos[:8], sin[:8])
    torch.testing.assert_close(a[:, :5], b[:, :5])
    assert not torch.allclose(a[:, 5:], b[:, 5:])


def test_attention_with_a_cached_prefix_equals_full_attention() -> None:
    torch.manual_seed(0)
    cfg = _cfg()
    attn = Attention(cfg, 1)
    cos, sin = rope_tables(8, 64, 10000.0, "standard")
    x = torch.randn(2, 10, 32)
    full = attn(x, cos[:10], sin[:10])
    cache = KVCache(cfg, batch_size=2, max_len=16, device="cpu", dtype=torch.float32)
    parts = []
    for lo, hi in [(0, 4), (4, 7), (7, 8), (8, 10)]:  # prefill, chunk, single token, chunk
        parts.append(attn(x[:, lo:hi], cos[lo:hi], sin[lo:hi], cache))
        cache.pos = hi
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-5, rtol=1e-5)
    assert cache.k[0].abs().sum() == 0  # layer 0's slot untouched by layer 1


def test_kv_cache_refuses_overflow() -> None:
    cache = KVCache(_cfg(), batch_size=1, max_len=4, device="cpu", dtype=torch.float32)
    cache.pos = 3
    with pytest.raises(ValueError, match="KV cache holds 4 positions"):
        cache.update(0, torch.zeros(1, 2, 2, 8), torch.zeros(1, 2, 2, 8))


def test_mlp_formulas() -> None:
    torch.manual_seed(0)
    x = torch.randn(3, 32)
    gelu = MLP(_cfg(activation="gelu"))
    assert gelu.fc.weight.shape == (48, 32)
    torch.testing.assert_close(gelu(x), F.gelu(x @ gelu.fc.weight.T) @ gelu.proj.weight.T)
    swiglu = MLP(_cfg(activation="swiglu"))
    assert swiglu.fc.weight.shape == (96, 32)
    gate, up = swiglu.fc.weight[:48], swiglu.fc.weight[48:]
    expected = (F.silu(x @ gate.T) * (x @ up.T)) @ swiglu.proj.weight.T
    torch.testing.assert_close(swiglu(x), expected)


def test_norms() -> None:
    x = torch.randn(4, 32) * 3 + 1
    rms = build_norm(_cfg(norm="rmsnorm", norm_eps=1e-6))
    torch.testing.assert_close(rms(x), x / x.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt())
    ln = build_norm(_cfg(norm="layernorm"))
    assert ln.bias is not None
    torch.testing.assert_close(
        ln(x),
        (x - x.mean(-1, keepdim=True)) / x.var(-1, unbiased=False, keepdim=True).add(1e-5).sqrt(),
    )
