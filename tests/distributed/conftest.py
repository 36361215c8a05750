"""Fixtures of the distributed tests (helpers live in tests/distributed/support.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.support.training import write_kjv_corpus


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    """400 KJV paragraphs as JSON lines and a 400-token BPE trained on them."""
    return write_kjv_corpus(tmp_path_factory.mktemp("dist-corpus"), 400, 400)
