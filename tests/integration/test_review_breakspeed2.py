"""Adversarial review of #16's loader hand-over (rows as numpy from the workers) and #15's
z-loss from the chunked loss: what broke, as users run it."""

from __future__ import annotations

import numpy as np
import pytest
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


def test_z_loss_with_the_chunked_loss_resumes_exactly_and_exports(tmp_path, capsys):
    """`optimizer.z_loss` with `runtime.chunked_loss: true`, document masking, bf16 autocast and
    2 accumulated micro-batches over 2 loader workers: a run resumed from its step-4 checkpoint
    logs the same loss and z-loss and ends with the same weights as one that never stopped;
    eval reproduces the logged val_loss; export and generate take the checkpoint."""
    import json

    from tests.support.training import checkpoint_dir

    from lmstream.cli import main
    from lmstream.train import checkpoint as ckpt

    corpus = write_kjv_corpus(tmp_path, 60, 300)
    cfg = tiny_training_config(corpus, 8, **{
        "optimizer.z_loss": 1e-3,
        "runtime.chunked_loss": True,
        "runtime.precision": "bf16",
        "model.document_masking": True,
        "data.gradient_accumulation_steps": 2,
        "data.num_workers": 2,
        "runtime.checkpoint": {"every_n_steps": 4, "max_keep": 5, "async_save": False},
    })  # fmt: skip
    ref, resumed = tmp_path / "ref", tmp_path / "resumed"
    assert train_in_process(write_run(ref, cfg)) == 0
    mid = str(checkpoint_dir(ref, 4))
    assert train_in_process(write_run(resumed, cfg), "--resume", mid) == 0
    for key in ("loss", "z_loss"):
        got, want = logged(resumed, key), logged(ref, key)
        assert sorted(got) == [5, 6, 7, 8] and all(got[s] == want[s] for s in got)
    a = ckpt.load_model_state(checkpoint_dir(ref, 8))[0]
    b = ckpt.load_model_state(checkpoint_dir(resumed, 8))[0]
    assert all(torch.equal(a[k], b[k]) for k in a)
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(ref / "checkpoints"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["val_loss"] == pytest.approx(logged(ref, "val_loss")[8], rel=1e-5)
    assert (
        main(["export", "--checkpoint", str(ref / "checkpoints"), "--out", str(tmp_path / "hf")])
        == 0
    )
    args = ["generate", "--checkpoint", str(ref / "checkpoints"), "--prompt", "And God"]
    assert main([*args, "--max-new-tokens", "8", "--temperature", "0", "--device", "cpu"]) == 0
