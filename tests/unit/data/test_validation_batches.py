"""The validation set is a fixed number of sequences: the same rows whatever the training batch
split, the world size (ranks split it) or the evaluation batch size (speed only)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tests.distributed.support import tiny_config
from tests.support.training import write_kjv_corpus

from lmstream.config import parse_training_config
from lmstream.data.validation import build_validation_batches
from lmstream.tokenizer import load_tokenizer


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_kjv_corpus(tmp_path_factory.mktemp("corpus"), 80, 300)


def _batches(corpus: Path, run_dir: Path, *, rank: int = 0, world_size: int = 1, **overrides):
    cfg = parse_training_config(tiny_config(corpus, **overrides), run_dir)
    tokenizer = load_tokenizer(cfg.tokenizer.tokenizer_json)
    return build_validation_batches(cfg, tokenizer, run_dir, rank=rank, world_size=world_size)


def _counted_rows(batches) -> list[tuple]:
    """(inputs, targets) of each row that has counted targets (padding rows have none)."""
    rows = []
    for b in batches:
        for x, y in zip(b.inputs.numpy(), b.targets.numpy(), strict=True):
            if (y != -100).any():
                rows.append((tuple(x), tuple(y)))
    return rows


def test_the_set_does_not_depend_on_the_training_batch_split(corpus, tmp_path) -> None:
    sets = []
    for bsz, accum in ((8, 1), (4, 2), (2, 4), (1, 8)):
        overrides = {"data.batch_size": bsz, "data.gradient_accumulation_steps": accum}
        sets.append(_counted_rows(_batches(corpus, tmp_path, **overrides)))
    assert all(s == sets[0] for s in sets)
    # runtime.evaluation.max_batches: 2 batches of the evaluation batch size (default 8)
    assert len(sets[0]) == 16


def test_ranks_split_the_same_set(corpus, tmp_path) -> None:
    one = _counted_rows(_batches(corpus, tmp_path, **{"runtime.evaluation.max_sequences": 13}))
    assert len(one) == 13
    for world in (2, 3, 4):
        per_rank = [
            _batches(corpus, tmp_path, rank=r, world_size=world,
                     **{"runtime.evaluation.max_sequences": 13})
            for r in range(world)
        ]  # fmt: skip
        # the same number of forward passes on every rank (FSDP gathers in each one)
        assert len({len(b) for b in per_rank}) == 1
        split = [row for b in per_rank for row in _counted_rows(b)]
        assert sorted(split) == sorted(one), world


def test_the_evaluation_batch_size_only_changes_the_chunking(corpus, tmp_path) -> None:
    base = {"runtime.evaluation.max_sequences": 12}
    a = _batches(corpus, tmp_path, **base, **{"runtime.evaluation.batch_size": 5})
    b = _batches(corpus, tmp_path, **base, **{"runtime.evaluation.batch_size": 12})
    assert [len(x.inputs) for x in a] == [5, 5, 2] and len(b) == 1
    assert np.array_equal(np.concatenate([x.inputs for x in a]), b[0].inputs.numpy())
