"""Fixtures of the reliability suite: the tiny corpus and the uninterrupted reference run
(helpers are in ``tests/reliability/support.py``)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
from tests.reliability.support import tiny_config, train_in_process, write_run

from lmstream.corpus import kjv_documents
from lmstream.tokenizer import save_tokenizer, train_bpe


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    """300 KJV paragraphs as JSON lines and a 300-token BPE trained on them."""
    root = tmp_path_factory.mktemp("rel-corpus")
    docs = list(itertools.islice(kjv_documents(), 300))
    with open(root / "train.jsonl", "w") as f:
        for doc in docs:
            f.write(json.dumps({"text": doc}) + "\n")
    save_tokenizer(train_bpe(docs, 300, ["<|endoftext|>", "<|pad|>"]), root / "tok")
    return root


@pytest.fixture(scope="session")
def reference(corpus, tmp_path_factory) -> Path:
    """The uninterrupted run every faulted run is compared with."""
    run_dir = tmp_path_factory.mktemp("rel-reference")
    assert train_in_process(write_run(run_dir, tiny_config(corpus))) == 0
    return run_dir
