"""Fixtures of the reliability suite: the tiny corpus and the uninterrupted reference run
(helpers are in ``tests/reliability/support.py``)."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.reliability.support import tiny_config
from tests.support.training import train_in_process, write_kjv_corpus, write_run


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    """300 KJV paragraphs as JSON lines and a 300-token BPE trained on them."""
    return write_kjv_corpus(tmp_path_factory.mktemp("rel-corpus"), 300, 300)


@pytest.fixture(scope="session")
def reference(corpus, tmp_path_factory) -> Path:
    """The uninterrupted run every faulted run is compared with."""
    run_dir = tmp_path_factory.mktemp("rel-reference")
    assert train_in_process(write_run(run_dir, tiny_config(corpus))) == 0
    return run_dir
