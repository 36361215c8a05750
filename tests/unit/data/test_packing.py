"""Packing: no token lost or added, eot exactly at document ends, resumable positions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer

from lmstream.data.packing import Batch, Packer, check_vocab, encode_documents, eot_id
from lmstream.errors import ConfigError
from lmstream.tokenizer import bpe_trainer, new_bpe

EOT = 0


def _docs(seed: int = 0, n: int = 60) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    # Lengths from 1 to several rows, so documents both share rows and span many.
    return [rng.integers(1, 50, size=int(rng.integers(1, 40))) for _ in range(n)]


def _expected(docs: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([np.append(d, EOT) for d in docs])


@pytest.mark.parametrize("row_length", [2, 7, 17, 33])
def test_no_token_lost_and_boundaries(row_length: int) -> None:
    docs = _docs()
    packer = Packer(row_length, EOT)
    rows = []
    for i, doc in enumerate(docs):
        packer.add(doc, tag=i)
        if packer.rows_ready:
            rows.append(packer.take(packer.rows_ready))
    packed = np.concatenate([np.concatenate(rows).reshape(-1), packer.carry()])
    np.testing.assert_array_equal(packed, _expected(docs))
    assert len(packer) < row_length  # the carry is less than one row
    assert all(r.shape[1] == row_length for r in rows)
    # Every eot sits exactly where a document ends, and nowhere else.
    ends = np.cumsum([len(d) + 1 for d in docs]) - 1
    np.testing.assert_array_equal(np.flatnonzero(packed == EOT), ends)


def test_position_names_the_next_token_and_start_resumes_there() -> None:
    docs = _docs(seed=1)
    packer = Packer(9, EOT)
    for i, doc in enumerate(docs):
        packer.add(doc, tag=i)
    first = packer.take(7)
    tag, offset = packer.position()
    # A fresh packer fed from (tag, offset) on produces the rest of the stream exactly.
    resumed = Packer(9, EOT)
    resumed.add(docs[tag], tag=tag, start=offset)
    for i in range(tag + 1, len(docs)):
        resumed.add(docs[i], tag=i)
    rest = resumed.take(resumed.rows_ready)
    expected = _expected(docs)
    np.testing.assert_array_equal(first.reshape(-1), expected[: 7 * 9])
    np.testing.assert_array_equal(rest.reshape(-1), expected[7 * 9 : 7 * 9 + rest.size])


def test_start_at_the_eot_keeps_only_the_eot() -> None:
    packer = Packer(3, EOT)
    packer.add(np.array([5, 6]), tag="a", start=2)
    packer.add(np.array([7]), tag="b")
    np.testing.assert_array_equal(packer.take(1)[0], [EOT, 7, EOT])
    assert packer.position() is None
    with pytest.raises(ValueError):
        packer.add(np.array([5]), start=2)
    with pytest.raises(ValueError):
        packer.take(1)


def test_batch_from_rows_shifts_targets() -> None:
    rows = np.arange(2 * 5).reshape(2, 5)
    batch = Batch.from_rows(rows, epoch=3)
    assert batch.inputs.shape == batch.targets.shape == (2, 4)
    assert batch.inputs.dtype == torch.long and batch.epoch == 3
    assert torch.equal(batch.inputs[:, 1:], batch.targets[:, :-1])
    assert batch.inputs.is_contiguous() and batch.targets.is_contiguous()


def _tokenizer(special: list[str]) -> Tokenizer:
    # new_bpe + bpe_trainer, not train_bpe: some tests leave <|endoftext|> out on purpose.
    tok = new_bpe()
    tok.train_from_iterator(
        ["the quick brown fox", "jumps over the lazy dog"] * 20, bpe_trainer(300, special)
    )
    return tok


def test_encode_documents_matches_single_encodes() -> None:
    tok = _tokenizer(["<|endoftext|>", "<|pad|>"])
    texts = ["the quick fox", "", "lazy dog jumps ünïcode"]
    got = encode_documents(tok, texts)
    assert [g.tolist() for g in got] == [tok.encode(t).ids for t in texts]
    assert encode_documents(tok, []) == []


def test_vocab_checks() -> None:
    tok = _tokenizer(["<|endoftext|>", "<|pad|>"])
    size = tok.get_vocab_size(with_added_tokens=True)
    assert check_vocab(tok, None) == size
    assert check_vocab(tok, size + 64) == size + 64  # a padded embedding table is fine
    assert eot_id(tok) == tok.token_to_id("<|endoftext|>")
    with pytest.raises(ConfigError, match="model.vocab_size: 100 is smaller"):
        check_vocab(tok, 100)
    with pytest.raises(ConfigError, match="no <\\|endoftext\\|> token"):
        check_vocab(_tokenizer(["<|pad|>"]), None)
