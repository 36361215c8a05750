"""Adversarial review of #16's loader hand-over (rows as numpy from the workers) and #15's
z-loss from the chunked loss: what broke, as users run it."""

from __future__ import annotations

import numpy as np
import torch
from tests.support.training import (
    logged,
    tiny_training_config,
    train_in_process,
    write_kjv_corpus,
    write_run,
)

from lmstream.data.worker import to_batch


def test_a_padded_one_row_batch_keeps_its_inputs():
    """A worker's last batch of a pass is padded: its targets past the real tokens are -100.
    With one row per batch, inputs row[:-1] and targets row[1:] were views of the same memory
    (.contiguous() of a one-row slice is the slice itself), so the -100 written into the
    targets also landed in the inputs, an embedding index out of range."""
    batch = to_batch(np.arange(10, dtype=np.int64).reshape(1, 10), 5, 0)
    assert batch.inputs.tolist() == [list(range(9))]
    assert batch.targets.tolist() == [[1, 2, 3, 4] + [-100] * 5]
    rows = torch.arange(10).reshape(1, 10)  # a mixture's workers send a tensor
    assert to_batch(rows, 5, 0).inputs.min() >= 0 and rows.min() >= 0


def test_batch_size_one_trains_past_the_end_of_a_pass(tmp_path):
    """`data.batch_size: 1` with 2 loader workers over a small corpus: every worker's last row
    of the pass is padded, and the run trained on (no index error) into the next pass."""
    corpus = write_kjv_corpus(tmp_path, 12, 300)
    cfg = tiny_training_config(
        corpus,
        60,
        **{
            "data.batch_size": 1,
            "data.num_workers": 2,
            "data.sequence_length": 64,
            "data.validation_documents": 2,
        },
    )
    run = tmp_path / "run"
    assert train_in_process(write_run(run, cfg)) == 0
    assert max(logged(run, "epoch").values()) >= 1
