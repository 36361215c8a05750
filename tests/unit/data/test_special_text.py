"""Special-token text inside a document is plain text (issue #19, item 8): web text holding the
literal ``<|endoftext|>`` or ``<|pad|>`` must not inject document boundaries or padding. Only the
packer inserts ``<|endoftext|>``, after each document."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
from tests.unit.data.test_loader import _config, _rows, _take, _write_jsonl

from lmstream.cli import main
from lmstream.data.loader import build_train_loader, build_validation_batches
from lmstream.data.packing import encode_documents
from lmstream.data.token_shards import TokenShards, write_token_shards
from lmstream.tokenizer import train_bpe

SPECIALS = ["<|endoftext|>", "<|pad|>"]


def _texts(n: int) -> list[str]:
    """Every third document quotes a special token, as a web page about tokenizers would."""
    return [
        f"doc {i} the quick brown fox"
        + (f" wrote {SPECIALS[i % 2]} in the middle<|pad|>" if i % 3 == 0 else " jumps over")
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def tokenizer():
    return train_bpe(_texts(200), 320, SPECIALS)


def test_encode_documents_keeps_special_text_plain(tokenizer) -> None:
    eot, pad = (tokenizer.token_to_id(t) for t in SPECIALS)
    text = "a <|endoftext|> b<|pad|>c"
    (ids,) = encode_documents(tokenizer, [text])
    assert eot not in ids and pad not in ids
    assert tokenizer.decode(ids.tolist()) == text  # the text survives, byte for byte
    # The tokenizer object is left as it was: other callers (generate) still see special tokens.
    assert tokenizer.encode("<|endoftext|>").ids == [eot]


def test_training_and_validation_batches_hold_no_injected_specials(tmp_path, tokenizer) -> None:
    """Two loader workers, as users run it: the only eot ids are the packer's, one per document,
    and no pad id appears anywhere."""
    texts = _texts(120)
    train = _write_jsonl(tmp_path / "train.jsonl", texts)
    cfg = _config(tmp_path / "run", tokenizer, train_shards=[str(train)], num_workers=2)
    eot, pad = (tokenizer.token_to_id(t) for t in SPECIALS)
    docs = []
    for batch in _take(build_train_loader(cfg, tokenizer, tmp_path / "run"), 20):
        rows = _rows([batch]).reshape(-1)  # one worker's contiguous stream
        assert pad not in rows
        # Between two eots lies exactly one whole document, which decodes to one of the texts.
        cuts = np.flatnonzero(rows == eot)
        docs += [tokenizer.decode(rows[a + 1 : b].tolist()) for a, b in itertools.pairwise(cuts)]
    assert docs and set(docs) <= set(texts)
    assert any(SPECIALS[0] in d for d in docs)
    val = _rows(build_validation_batches(cfg, tokenizer, tmp_path / "run")).reshape(-1)
    assert pad not in val
    cuts = np.flatnonzero(val == eot)
    assert all(
        tokenizer.decode(val[a + 1 : b].tolist()) in texts for a, b in itertools.pairwise(cuts)
    )


def test_token_shards_hold_special_text_as_plain_text(tmp_path, tokenizer) -> None:
    texts = _texts(30)
    write_token_shards(texts, tokenizer, tmp_path / "shards", batch_size=7)
    shards = TokenShards([str(tmp_path / "shards")])
    for i, text in enumerate(texts):
        ids = np.asarray(shards.document(i)).tolist()
        assert tokenizer.decode(ids) == text
        assert tokenizer.token_to_id("<|pad|>") not in ids


def test_orchestrate_counts_documents_with_special_text(tmp_path, capsys) -> None:
    texts = _texts(90)
    data = tmp_path / "c.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    code = main([
        "orchestrate", "--no-progress", "--vocab-size", "300", "--data-files", str(data),
        "--experiment", "sp", "--workspace", str(tmp_path / "ws"), "--model-size", "tiny",
    ])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out
    assert "special-token text: 30 documents (kept as plain text" in out, out
