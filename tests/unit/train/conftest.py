"""Shared fixtures of the training unit tests: a small, valid TrainingConfig in a tmp run folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmstream.config import TrainingConfig, parse_training_config


def small_config_dict(run_dir: Path) -> dict:
    return {
        "model": {
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_layers": 1,
            "num_attention_heads": 2,
            "max_position_embeddings": 16,
        },
        "tokenizer": {"tokenizer_json": str(run_dir / "tokenizer.json")},
        "data": {"batch_size": 2, "sequence_length": 8},
        "optimizer": {"learning_rate": 1e-3, "weight_decay": 0.1},
        "scheduler": {"warmup_steps": 2, "total_steps": 10},
    }


@pytest.fixture
def small_config(tmp_path: Path) -> TrainingConfig:
    (tmp_path / "tokenizer.json").write_text('{"fake": "tokenizer"}')
    return parse_training_config(small_config_dict(tmp_path), tmp_path)
