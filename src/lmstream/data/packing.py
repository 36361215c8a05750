"""Tokenize documents in batches and pack them into rows of ``sequence_length + 1`` tokens.

Documents are concatenated with ``<|endoftext|>`` after each one and the token stream is cut into
rows of ``row_length`` tokens (``sequence_length + 1``: inputs are ``row[:-1]``, targets
``row[1:]``). Nothing is padded and nothing is dropped: the remainder of a document continues in
the next row, so the packer's whole state is its carry (the tokens not yet cut into a row).

The carry is kept as pieces tagged with where their document came from, so the loader can save
it as a *position* (the document holding the next token, and the offset into it) instead of a
token list: a checkpoint stays a few hundred bytes however long the documents are, and resume
re-tokenizes that one document (see ``lmstream.data.loader``).

The ``<|endoftext|>`` after each document is the only one in a row (``encode_documents`` encodes
a document's own text of it as plain text), so it is also all that ``model.document_masking``
needs to find document boundaries (``lmstream.model.attention_mask``): nothing else is handed on.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from lmstream.config import EOT_TOKEN
from lmstream.errors import ConfigError
from lmstream.tokenizer import special_tokens_as_text

TOKEN_DTYPE = np.int64


@dataclass
class Batch:
    """One micro-batch: ``inputs`` and ``targets`` (next tokens), LongTensor (B, T) each.

    ``weight`` 0 marks an idle batch: a rank whose part of the epoch is used up while its peers'
    is not steps on it with zero weight, so every rank takes the same steps (see loader.py)."""

    inputs: torch.Tensor
    targets: torch.Tensor
    epoch: int = 0
    weight: float = 1.0

    @classmethod
    def from_rows(cls, rows: torch.Tensor | np.ndarray, epoch: int = 0) -> Batch:
        """Split rows of T + 1 tokens into inputs ``row[:-1]`` and targets ``row[1:]``."""
        rows = torch.as_tensor(rows, dtype=torch.long)
        # Copies, never views: a one-row slice is already contiguous, and targets written to
        # (padding set to -100) must not reach the inputs through the rows' shared memory.
        fmt = torch.contiguous_format
        return cls(
            rows[:, :-1].clone(memory_format=fmt), rows[:, 1:].clone(memory_format=fmt), int(epoch)
        )

    @property
    def tokens(self) -> int:
        """Real target tokens: padding (-100) and idle batches (weight 0) count for nothing."""
        return round(self.weight * int((self.targets != -100).sum()))

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        return Batch(
            self.inputs.to(device, non_blocking=non_blocking),
            self.targets.to(device, non_blocking=non_blocking),
            self.epoch,
            self.weight,
        )


def eot_id(tokenizer: Any) -> int:
    """Id of ``<|endoftext|>``, the document separator (ConfigError when the tokenizer lacks it)."""
    token_id = tokenizer.token_to_id(EOT_TOKEN)
    if token_id is None:
        raise ConfigError(
            f"tokenizer.tokenizer_json: the tokenizer has no {EOT_TOKEN} token, which separates "
            "documents; re-train it with `lmstream orchestrate` (it adds the special tokens)"
        )
    return token_id


def check_vocab(tokenizer: Any, vocab_size: int | None) -> int:
    """The model's vocabulary size, after checking that the tokenizer fits it (ConfigError if not).

    Token ids at or above the model's embedding rows would index out of range mid-run (a CUDA
    assert, or garbage), so the mismatch is caught before training starts.
    """
    size = tokenizer.get_vocab_size(with_added_tokens=True)
    eot_id(tokenizer)
    if vocab_size is not None and vocab_size < size:
        raise ConfigError(
            f"model.vocab_size: {vocab_size} is smaller than the tokenizer's vocabulary ({size} "
            "tokens); set it to null to take the tokenizer's size, or use the tokenizer the "
            "model was built for"
        )
    return vocab_size if vocab_size is not None else size


def encode_documents(tokenizer: Any, texts: Sequence[str]) -> list[np.ndarray]:
    """Token ids of each text, in one ``encode_batch`` call (no special tokens added, and the
    text of a special token inside a document encoded as plain text: documents cannot inject
    boundaries or padding, see ``tokenizer.special_tokens_as_text``).

    ``encode_batch_fast`` (tokenizers >= 0.21) skips computing character offsets, which we never
    use; it is the same tokenization.
    """
    if not texts:
        return []
    encode = getattr(tokenizer, "encode_batch_fast", None) or tokenizer.encode_batch
    with special_tokens_as_text(tokenizer):
        encodings = encode(list(texts), add_special_tokens=False)
    return [np.asarray(e.ids, dtype=TOKEN_DTYPE) for e in encodings]


@dataclass
class _Piece:
    """The not-yet-packed tail of one document: ``tokens`` (its eot included) from ``offset``."""

    tag: Hashable
    tokens: np.ndarray
    offset: int


class Packer:
    """Concatenate documents, each followed by ``eot_id``, and cut rows of ``row_length`` tokens."""

    def __init__(self, row_length: int, eot_id: int):
        if row_length < 2:
            raise ValueError(f"row_length must be at least 2 (got {row_length})")
        self.row_length = row_length
        self.eot_id = int(eot_id)
        self._pieces: deque[_Piece] = deque()
        self._pending = 0

    def __len__(self) -> int:
        """Tokens waiting to be cut into rows (the carry)."""
        return self._pending

    @property
    def rows_ready(self) -> int:
        return self._pending // self.row_length

    def add(self, tokens: np.ndarray | Sequence[int], tag: Hashable = None, start: int = 0) -> None:
        """Append one document (and its ``<|endoftext|>``), skipping its first ``start`` tokens.

        ``start`` counts into the document with its eot, so ``start == len(tokens)`` leaves only
        the eot; it is how a resumed loader re-enters a document it had half packed.
        """
        doc = np.empty(len(tokens) + 1, dtype=TOKEN_DTYPE)
        doc[:-1] = tokens
        doc[-1] = self.eot_id
        if not 0 <= start < len(doc):
            raise ValueError(f"start {start} is outside a document of {len(doc)} tokens")
        self._pieces.append(_Piece(tag, doc, start))
        self._pending += len(doc) - start

    def take(self, n_rows: int) -> np.ndarray:
        """Cut ``n_rows`` rows off the front of the carry: an array (n_rows, row_length)."""
        need = n_rows * self.row_length
        if need > self._pending:
            raise ValueError(f"asked for {n_rows} rows but only {self.rows_ready} are ready")
        out = np.empty(need, dtype=TOKEN_DTYPE)
        filled = 0
        while filled < need:
            piece = self._pieces[0]
            n = min(need - filled, len(piece.tokens) - piece.offset)
            out[filled : filled + n] = piece.tokens[piece.offset : piece.offset + n]
            filled += n
            piece.offset += n
            if piece.offset == len(piece.tokens):
                self._pieces.popleft()
        self._pending -= need
        return out.reshape(n_rows, self.row_length)

    def position(self) -> tuple[Hashable, int] | None:
        """(tag, offset) of the next token to be packed, or None when the carry is empty."""
        if not self._pieces:
            return None
        head = self._pieces[0]
        return head.tag, head.offset

    def carry(self) -> np.ndarray:
        """The carry as one array (for inspection and tests)."""
        if not self._pieces:
            return np.empty(0, dtype=TOKEN_DTYPE)
        return np.concatenate([p.tokens[p.offset :] for p in self._pieces])
