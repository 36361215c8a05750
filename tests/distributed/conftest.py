"""Fixtures of the distributed tests (helpers live in tests/distributed/support.py)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from lmstream.corpus import kjv_documents
from lmstream.tokenizer import save_tokenizer, train_bpe


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    """400 KJV paragraphs as JSON lines and a 400-token BPE trained on them."""
    root = tmp_path_factory.mktemp("dist-corpus")
    docs = list(itertools.islice(kjv_documents(), 400))
    with open(root / "train.jsonl", "w") as f:
        for doc in docs:
            f.write(json.dumps({"text": doc}) + "\n")
    save_tokenizer(train_bpe(docs, 400, ["<|endoftext|>", "<|pad|>"]), root / "tok")
    return root
