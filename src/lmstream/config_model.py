"""training.yaml's `model:` and `tokenizer:` sections (see lmstream.config)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from lmstream.config_base import (
    DEFAULT_ROPE_THETA,
    ResolvedPath,
    _Section,
)

# --------------------------------------------------------------------------------------- model


class ModelConfig(_Section):
    """The decoder-only transformer (seed: `model:`)."""

    hidden_size: int = Field(ge=1, description="Width of the residual stream.")
    intermediate_size: int = Field(ge=1, description="Width of the MLP's hidden layer.")
    num_layers: int = Field(ge=1, description="Number of transformer blocks.")
    num_attention_heads: int = Field(ge=1, description="Query heads per attention layer.")
    num_key_value_heads: int | None = Field(
        default=None,
        ge=1,
        description="Key/value heads (GQA when fewer than query heads); null = num_attention_heads.",
    )
    max_position_embeddings: int = Field(
        default=2048, ge=1, description="Longest sequence the model supports."
    )
    attn_dropout: float | None = Field(
        default=None, ge=0.0, lt=1.0, description="Dropout on attention probabilities; null = 0."
    )
    residual_dropout: float | None = Field(
        default=None,
        ge=0.0,
        lt=1.0,
        description="Dropout on each residual branch's output; null = 0.",
    )
    rope_mode: Literal["standard", "interleaved"] | None = Field(
        default=None,
        description="Rotary embedding layout: 'standard' rotates the two halves of each head (Llama/NeoX), "
        "'interleaved' rotates adjacent pairs (GPT-J); null = standard.",
    )
    rope_theta: float | None = Field(
        default=None, gt=0.0, description="RoPE base frequency; null = 10000."
    )
    activation: Literal["gelu", "swiglu"] = Field(
        default="gelu", description="MLP: 'gelu' (2 matrices) or 'swiglu' (3, gated)."
    )
    norm: Literal["layernorm", "rmsnorm"] = Field(
        default="layernorm", description="Normalization layer type (pre-norm)."
    )
    norm_eps: float = Field(
        default=1e-5, gt=0.0, lt=1.0, description="Epsilon of the normalization layers."
    )
    tie_embeddings: bool = Field(
        default=True, description="Share the input embedding with the output head."
    )
    init_std: float = Field(
        default=0.02,
        gt=0.0,
        description="Std of the normal weight init (residual projections scaled by 1/sqrt(2*num_layers)).",
    )
    vocab_size: int | None = Field(
        default=None, ge=2, description="Vocabulary size; null = taken from the tokenizer."
    )
    document_masking: bool = Field(
        default=False,
        description="Document-aware attention: in a packed row a token attends only to earlier "
        "tokens of its own document (documents end at <|endoftext|>); false = plain causal.",
    )
    document_positions: Literal["restart", "continue"] | None = Field(
        default=None,
        description="With document_masking: RoPE positions 'restart' at 0 in each document or "
        "'continue' along the row; null = restart. Needs document_masking.",
    )
    document_separator_id: int | None = Field(
        default=None,
        ge=0,
        description="With document_masking: the token id that ends a document; null = the "
        "tokenizer's <|endoftext|> (filled in at training setup, saved with checkpoints).",
    )
    qk_norm: bool = Field(
        default=False,
        description="RMSNorm on each head's queries and keys before RoPE (OLMo 2, Qwen3): "
        "bounds attention logits, steadier at high learning rates.",
    )

    @model_validator(mode="after")
    def _check_heads(self) -> ModelConfig:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size: {self.hidden_size} is not divisible by num_attention_heads "
                f"({self.num_attention_heads})"
            )
        if self.num_attention_heads % self.kv_heads:
            raise ValueError(
                f"num_key_value_heads: num_attention_heads ({self.num_attention_heads}) is not "
                f"divisible by num_key_value_heads ({self.kv_heads})"
            )
        if self.head_dim % 2:
            raise ValueError(
                f"hidden_size: head size hidden_size/num_attention_heads = {self.head_dim} must be even for RoPE"
            )
        return self._check_documents()

    def _check_documents(self) -> ModelConfig:
        for name in ("document_positions", "document_separator_id"):
            if getattr(self, name) is not None and not self.document_masking:
                raise ValueError(
                    f"{name}: applies only with document masking; set model.document_masking: "
                    f"true or remove {name}"
                )
        sep, vocab = self.document_separator_id, self.vocab_size
        if sep is not None and vocab is not None and sep >= vocab:
            raise ValueError(
                f"document_separator_id: {sep} is not a token id of the {vocab}-token "
                "vocabulary; set it to null to take the tokenizer's <|endoftext|>"
            )
        return self

    @property
    def kv_heads(self) -> int:
        return self.num_key_value_heads or self.num_attention_heads

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def theta(self) -> float:
        return self.rope_theta if self.rope_theta is not None else DEFAULT_ROPE_THETA

    @property
    def rope_layout(self) -> str:
        return self.rope_mode or "standard"

    @property
    def restart_positions(self) -> bool:
        """RoPE positions count from each document's start (document masking's default)."""
        return self.document_masking and self.document_positions != "continue"

    @property
    def attention_dropout(self) -> float:
        return self.attn_dropout or 0.0

    @property
    def dropout(self) -> float:
        return self.residual_dropout or 0.0


# ----------------------------------------------------------------------------------- tokenizer


class TokenizerConfig(_Section):
    """The experiment's tokenizer files (seed: `tokenizer:`)."""

    tokenizer_json: ResolvedPath = Field(
        description="tokenizer.json written by `lmstream orchestrate`."
    )
    vocab: ResolvedPath | None = Field(
        default=None, description="vocab.json (informational; tokenizer.json is what is loaded)."
    )
    merges: ResolvedPath | None = Field(
        default=None, description="merges.txt (informational; tokenizer.json is what is loaded)."
    )
    special_tokens: ResolvedPath | None = Field(
        default=None,
        description='special_tokens.txt: a JSON list such as ["<|endoftext|>", "<|pad|>"]; null = that list.',
    )
