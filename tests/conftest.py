"""Shared test setup: offline Hugging Face libraries, a deterministic CPU, fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# No network in tests: the datasets/hub libraries must never try the Hub.
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture
def seed_yaml_text() -> str:
    """The seed's training.yaml, copied verbatim from the seed workflow document users know."""
    return (FIXTURES / "seed_training.yaml").read_text()
