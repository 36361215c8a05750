"""tokenizer.py: real byte-level BPE training, files, loading by tokenizers and transformers."""

from __future__ import annotations

import json

import pytest
from tokenizers import Tokenizer

from lmstream.data.packing import eot_id
from lmstream.errors import CheckpointError, ConfigError
from lmstream.tokenizer import load_tokenizer, save_tokenizer, train_bpe

CORPUS = [
    "In the beginning God created the heaven and the earth.",
    "And the earth was without form, and void; and darkness was upon the face of the deep.",
    "Caf\u00e9 na\u00efve r\u00e9sum\u00e9 \u2014 \u65e5\u672c\u8a9e \U0001f389 tabs\tand\nnewlines",
] * 40

ROUND_TRIP = [
    "",
    " leading space",
    "trailing space ",
    "  \t\n\r\n mixed whitespace  ",
    "\x00\x01 control \x7f",
    "\u00e9\u0301 combining, \ufeff BOM, \u200b zero width",
    "\U0001f468\u200d\U0001f469\u200d\U0001f467 family emoji, \U00010348 gothic",
    "\ufffd replacement char and <|endoftext|> written as text",
    "\u0627\u0644\u0639\u0631\u0628\u064a\u0629 \u0939\u093f\u0928\u094d\u0926\u0940 \ud55c\uad6d\uc5b4",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tok = train_bpe(iter([CORPUS[:60], CORPUS[60:]]), 300, ["<|user|>"])
    folder = tmp_path_factory.mktemp("tok")
    save_tokenizer(tok, folder)
    return tok, folder


def test_special_tokens_first_and_vocab_size(trained):
    tok, _ = trained
    assert tok.token_to_id("<|endoftext|>") == 0 == eot_id(tok)
    assert tok.token_to_id("<|pad|>") == 1
    assert tok.token_to_id("<|user|>") == 2
    assert tok.get_vocab_size() == 300


def test_files_and_loaders_agree(trained):
    tok, folder = trained
    assert {p.name for p in folder.iterdir()} == {"tokenizer.json", "vocab.json", "merges.txt"}
    vocab = json.loads((folder / "vocab.json").read_text())
    assert len(vocab) == 300 and vocab["<|endoftext|>"] == 0
    assert (folder / "merges.txt").read_text().startswith("#version")
    loaded = load_tokenizer(folder / "tokenizer.json")
    raw = Tokenizer.from_file(str(folder / "tokenizer.json"))
    transformers = pytest.importorskip("transformers")
    hf = transformers.PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"))
    for text in ROUND_TRIP + CORPUS[:3]:
        ids = tok.encode(text).ids
        assert loaded.encode(text).ids == ids == raw.encode(text).ids
        assert hf.encode(text) == ids


@pytest.mark.parametrize("text", ROUND_TRIP)
def test_round_trip_is_byte_exact(trained, text):
    tok, _ = trained
    # Special-token strings in the text encode as the special token (as in GPT-2), so keep them.
    decoded = tok.decode(tok.encode(text).ids, skip_special_tokens=False)
    assert decoded.encode("utf-8") == text.encode("utf-8")


def test_unseen_bytes_still_round_trip(trained):
    tok, _ = trained
    text = "".join(chr(c) for c in range(32, 0x2000, 7))
    assert tok.decode(tok.encode(text).ids) == text


def test_bad_inputs(tmp_path):
    with pytest.raises(ConfigError, match="vocab-size"):
        train_bpe(["a"], 100, [])
    with pytest.raises(CheckpointError, match="not found"):
        load_tokenizer(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not a valid tokenizer.json"):
        load_tokenizer(tmp_path / "bad.json")
    plain = Tokenizer.from_str(
        '{"version":"1.0","model":{"type":"BPE","vocab":{"a":0},"merges":[]}}'
    )
    with pytest.raises(ConfigError, match="endoftext"):
        eot_id(plain)
