"""The decoder-only transformer: token embedding -> blocks -> final norm -> vocabulary head.

``blocks`` is the unit that activation checkpointing, torch.compile and FSDP wrap (applied
outside this file, see distributed.py); this file knows nothing about ranks or devices.
Building under ``torch.device("meta")`` allocates nothing: count parameters, then ``to_empty``
and :meth:`Transformer.init_weights` to materialise.

With tied embeddings the head reuses ``embed.weight`` through ``F.linear`` instead of a second
module sharing the tensor, so ``state_dict()`` holds each tensor once and saves to safetensors
as is.

With ``model.document_masking`` the forward finds each row's documents from the
``document_separator_id`` tokens in its input and attends within them (see attention_mask.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lmstream.config import ModelConfig
from lmstream.model.attention_mask import (
    DocumentMask,
    build_document_mask,
    document_ids,
    document_positions,
    use_flex,
)
from lmstream.model.layers import Block, KVCache, RotaryEmbedding, build_norm, residual_init_std
from lmstream.train.loss import lm_loss


class Transformer(nn.Module):
    """A GPT/Llama-style pre-norm decoder with RoPE, configured by :class:`ModelConfig`."""

    def __init__(self, cfg: ModelConfig, vocab_size: int):
        super().__init__()
        self.config = cfg
        self.vocab_size = vocab_size
        # Rows of the loss projected at a time when targets are given (0 = full logits, returned
        # with the loss); set from runtime.chunked_loss by train/setup.py.
        self.loss_chunk_tokens = 0
        self.embed = nn.Embedding(vocab_size, cfg.hidden_size)
        self.rope = RotaryEmbedding(cfg)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.num_layers))
        self.norm = build_norm(cfg)
        self.head = (
            None if cfg.tie_embeddings else nn.Linear(cfg.hidden_size, vocab_size, bias=False)
        )
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """Normal(init_std) weights, scaled residual projections, unit norms, fresh RoPE tables.

        Safe to call again after ``to_empty()`` on a model built on the meta device.
        """
        std = self.config.init_std
        nn.init.normal_(self.embed.weight, mean=0.0, std=std)
        if self.head is not None:
            nn.init.normal_(self.head.weight, mean=0.0, std=std)
        for block in self.blocks:
            block.init_weights(std, residual_init_std(self.config))
        self.norm.reset_parameters()
        self.rope.reset_parameters()

    def forward(
        self,
        input_ids: torch.Tensor,
        targets: torch.Tensor | None = None,
        kv_cache: KVCache | None = None,
        return_lse: bool = False,
    ) -> tuple[torch.Tensor | None, ...]:
        """Logits (B, T, V) for token ids (B, T); with targets also the mean cross-entropy (and
        no logits when ``loss_chunk_tokens`` > 0: the loss is computed in chunks).

        Args:
            input_ids: (B, T) token ids.
            targets: (B, T) next-token ids, -100 to ignore a position; None = no loss.
            kv_cache: for incremental decoding; positions continue from ``kv_cache.pos`` and the
                cache is advanced by T.
            return_lse: with targets, also return the fp32 logsumexp of every position's logits
                (B, T), differentiable, for the z-loss: (logits or None, loss, lse).
        """
        start = kv_cache.pos if kv_cache is not None else 0
        T = input_ids.shape[1]
        x = self.embed(input_ids)  # (B, T, D)
        documents = None
        if self.config.document_masking:
            documents, cos, sin = self._documents(input_ids, kv_cache, self._compute_dtype(x))
        else:
            cos, sin = self.rope(start, T, self._compute_dtype(x))  # (T, E) each
        for block in self.blocks:
            x = block(x, cos, sin, kv_cache, documents)  # (B, T, D)
        if kv_cache is not None:
            kv_cache.pos += T
        x = self.norm(x)
        weight = self.embed.weight if self.head is None else self.head.weight
        if targets is not None and self.loss_chunk_tokens > 0:
            # Training: the loss in chunks, never the full (B, T, V) logits (train/loss.py).
            loss, lse = lm_loss(x, weight, targets, self.loss_chunk_tokens)
            return (None, loss, lse.view(targets.shape)) if return_lse else (None, loss)
        logits = F.linear(x, weight)  # (B, T, V)
        if targets is None:
            return logits, None
        # fp32 loss: bf16 log-softmax over a 50k vocabulary loses ~2 digits of the loss.
        full = logits.float()
        loss = F.cross_entropy(
            full.view(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100
        )
        if return_lse:
            return logits, loss, torch.logsumexp(full, dim=-1)
        return logits, loss

    def _documents(
        self, input_ids: torch.Tensor, kv_cache: KVCache | None, dtype: torch.dtype
    ) -> tuple[DocumentMask, torch.Tensor, torch.Tensor]:
        """The document mask and RoPE cos/sin of this forward's tokens (document masking)."""
        separator = self.config.document_separator_id
        if separator is None:
            raise ValueError(
                "model.document_separator_id is unset: document masking needs the id of "
                "<|endoftext|> (training setup fills it in from the tokenizer)"
            )
        past = kv_cache.pos if kv_cache is not None else 0
        seen = past + input_ids.shape[1]
        if seen > self.rope.max_positions:  # the messages of RotaryEmbedding and KVCache
            raise ValueError(
                f"sequence of {seen} positions exceeds max_position_embeddings "
                f"({self.rope.max_positions})"
            )
        if kv_cache is not None and seen > kv_cache.max_len:
            raise ValueError(f"KV cache holds {kv_cache.max_len} positions; {seen} requested")
        tokens = input_ids
        if kv_cache is not None:  # the documents may have begun in the cached prefix
            kv_cache.tokens[:, past:seen] = input_ids
            tokens = kv_cache.tokens[:, :seen]  # (B, S)
        docs = document_ids(tokens, separator)  # (B, S)
        dropout = self.config.attention_dropout if self.training else 0.0
        flex = kv_cache is None and use_flex(input_ids.device, dropout)
        mask = build_document_mask(docs, past, flex=flex)
        if self.config.restart_positions:
            cos, sin = self.rope.at(document_positions(docs)[:, past:], dtype)  # (B, T, E) each
        else:
            cos, sin = self.rope(past, input_ids.shape[1], dtype)  # (T, E) each
        return mask, cos, sin

    @staticmethod
    def _compute_dtype(x: torch.Tensor) -> torch.dtype:
        """The dtype q/k will have: the autocast dtype when autocast is on, else x's."""
        if torch.is_autocast_enabled(x.device.type):
            return torch.get_autocast_dtype(x.device.type)
        return x.dtype

    def new_kv_cache(self, batch_size: int, max_len: int | None = None) -> KVCache:
        """An empty cache on the model's device and dtype for up to ``max_len`` positions."""
        p = self.embed.weight
        return KVCache(
            self.config,
            batch_size,
            max_len or self.config.max_position_embeddings,
            p.device,
            p.dtype,
        )

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        """Parameter count (each tensor once); optionally without the token embedding / untied head."""
        total = sum(p.numel() for p in self.parameters())
        if exclude_embeddings:
            total -= self.embed.weight.numel()
            if self.head is not None:
                total -= self.head.weight.numel()
        return total

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token: 6N + 12 * L * D * T (PaLM, appendix B).

        N counts the weights of matmuls only: every matrix but the embedding lookup, plus the
        vocabulary head (the same tensor when tied). Norm gains and biases are left out (as in
        Kaplan et al. 2020's N): they cost O(1) FLOPs per parameter, not 6. The second term is
        attention's QK^T and AV (2 matmuls x 2 FLOPs x T x D per token and layer, x3 for
        forward + backward).
        """
        cfg = self.config
        matrices = sum(p.numel() for p in self.blocks.parameters() if p.dim() >= 2)
        n = matrices + self.vocab_size * cfg.hidden_size
        return 6.0 * n + 12.0 * cfg.num_layers * cfg.hidden_size * seq_len
