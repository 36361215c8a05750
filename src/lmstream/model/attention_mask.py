"""Document-aware attention for packed rows (``model.document_masking``, issue #15).

The packer (data/packing.py) writes ``<|endoftext|>`` after every document and nowhere else (a
document's own text of that token is encoded as plain text), so the separators already in a
row *are* its document boundaries: the model reads them from its input ids on the device, one
cumulative sum per forward shared by every layer. Nothing extra crosses the loader, and
training, evaluation, ``lmstream eval`` and lm-eval's harness all see the same mask.

A separator belongs to the document it ends (it predicts the next document's first token from
that document alone). A document cut by a row boundary continues in the next row as a new
document there: it cannot attend back into the previous row anyway, and with
``document_positions: restart`` its positions start again at 0, so every piece of a row is
computed exactly as if it were run alone (tests/unit/model/test_document_masking.py).

Kernels: on CUDA, ``torch.nn.attention.flex_attention`` compiled, with a block mask built from
the batch (blocks of 128 x 128 that cross no boundary are skipped or run unmasked, so the cost
falls with the documents' length instead of rising). Elsewhere (CPU, attention dropout, which
flex attention lacks, and KV-cache decoding) SDPA with a dense block-diagonal causal mask: the
same result, exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

try:  # flex attention arrived in torch 2.5; without it the dense path does everything
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
except ImportError:  # pragma: no cover - torch < 2.5
    create_block_mask = flex_attention = None

_compiled_flex: Any = None  # torch.compile(flex_attention), made on first CUDA use


def document_ids(tokens: torch.Tensor, separator: int) -> torch.Tensor:
    """(B, S) token ids -> (B, S) int32: each token's document within its row, 0, 1, 2, ...

    A separator closes its document: the token after it starts the next one."""
    ends = (tokens == separator).to(torch.int32)
    return ends.cumsum(-1, dtype=torch.int32) - ends


def document_positions(docs: torch.Tensor) -> torch.Tensor:
    """(B, S) document ids -> (B, S) long: each token's distance from its document's first token."""
    index = torch.arange(docs.shape[-1], device=docs.device).expand(docs.shape)
    starts = torch.ones(docs.shape, dtype=torch.bool, device=docs.device)
    starts[:, 1:] = docs[:, 1:] != docs[:, :-1]
    first = torch.where(starts, index, 0).cummax(-1).values
    return index - first


@dataclass
class DocumentMask:
    """Who may attend to whom in one forward: a flex ``BlockMask`` or a dense (B, 1, T, S)
    boolean mask for SDPA (True = may attend). Built once per forward, shared by all layers."""

    block: Any = None
    dense: torch.Tensor | None = None
    flex: Any = None  # the flex attention function that takes ``block``


def build_document_mask(
    docs: torch.Tensor, past: int, *, flex: bool, compiled: bool = True
) -> DocumentMask:
    """The mask of queries ``past .. S-1`` over keys ``0 .. S-1`` for document ids ``docs`` (B, S):
    a key is visible when it is not later than the query and in the same document.

    ``flex`` (no cached prefix): a flex attention block mask, ``compiled`` the CUDA way (tests
    check the mask itself eagerly on CPU); else a dense mask for SDPA."""
    B, S = docs.shape
    if flex and past == 0 and create_block_mask is not None:

        def same_document(b, h, q, k):
            return (docs[b, q] == docs[b, k]) & (k <= q)

        # _compile: builds the mask on the GPU without a (B, S, S) intermediate.
        block = create_block_mask(
            same_document, B, None, S, S, device=docs.device, _compile=compiled
        )
        return DocumentMask(
            block=block, flex=_compiled_flex_attention() if compiled else flex_attention
        )
    q_docs = docs[:, past:]  # (B, T)
    same = q_docs[:, :, None] == docs[:, None, :]  # (B, T, S)
    q_pos = torch.arange(past, S, device=docs.device)[:, None]
    causal = torch.arange(S, device=docs.device)[None, :] <= q_pos  # (T, S)
    return DocumentMask(dense=(same & causal)[:, None])  # (B, 1, T, S): broadcast over heads


def _compiled_flex_attention() -> Any:
    """flex_attention compiled once per process. Uncompiled it materialises the (T, S) scores;
    compiled it is one fused kernel (torchtitan and gpt-fast compile it the same way). Made
    here, outside the blocks, which may be compiled themselves."""
    global _compiled_flex
    if _compiled_flex is None:
        _compiled_flex = torch.compile(flex_attention, dynamic=False)
    return _compiled_flex


def use_flex(device: torch.device, dropout: float) -> bool:
    """Flex attention where it is a fused kernel (CUDA) and can do the job (no dropout)."""
    return flex_attention is not None and device.type == "cuda" and dropout == 0.0


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: DocumentMask,
    *,
    dropout: float,
    enable_gqa: bool,
) -> torch.Tensor:
    """Attention of q (B, H, T, E) over k/v (B, K, S, E) under ``mask``: (B, H, T, E)."""
    if mask.block is not None:
        return mask.flex(q, k, v, block_mask=mask.block, enable_gqa=enable_gqa)
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask.dense, dropout_p=dropout, enable_gqa=enable_gqa
    )
