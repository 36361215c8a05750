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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.parametrize("chunk", [0, 5])
def test_a_micro_batch_of_padding_only_adds_nothing_to_the_step(chunk):
    """runtime.micro_batch: auto re-cuts a step's rows (micro_batch.regroup); a worker's padded
    last batch then gives micro-batches whose targets are all -100. Their loss is 0/0 = NaN, and
    NaN x weight 0 made the step's loss NaN: the step was skipped as non-finite (and with the
    chunked loss every gradient was NaN too). The step must equal the one on the loader's own
    micro-batches."""
    from tests.support.models import assert_same_step, z_loss_step

    from lmstream.train.micro_batch import regroup

    rng = np.random.default_rng(0)
    full = to_batch(rng.integers(1, 64, (4, 13)), 4 * 13, 0)
    padded = to_batch(rng.integers(1, 64, (4, 13)), 10, 0)  # a worker's last: row 0 real
    own = z_loss_step([full, padded], chunk, 1e-3)
    recut = z_loss_step(regroup([full, padded], 2), chunk, 1e-3)
    assert torch.isfinite(recut[0])
    assert_same_step(recut, own, grad_rtol=1e-4)


@pytest.mark.slow
def test_micro_batch_auto_through_a_pass_end_skips_no_step(tmp_path):
    """The CLI run: 2 x 2 rows per step re-cut to micro-batch 1 (the memory limit admits 1, not
    2), 2 loader workers, past the end of a pass: no step is skipped as non-finite."""
    from tests.integration.test_micro_batch import config

    corpus = write_kjv_corpus(tmp_path, 10, 300)
    cfg = config(corpus, 40, **{"data.validation_documents": 2, "data.sequence_length": 64})
    run = tmp_path / "run"
    assert train_in_process(write_run(run, cfg)) == 0
    assert max(logged(run, "epoch").values()) >= 1
    assert set(logged(run, "skipped_steps").values()) == {0}  # was: step 9 non-finite, skipped


@pytest.mark.slow
def test_one_row_batches_from_8_workers_resume_exactly_across_a_pass_end(tmp_path):
    """`data.batch_size: 1`, 8 loader workers handing their rows over as numpy, passes ending
    on the way: resumed from the step-16 checkpoint, steps 17-48 and the final weights equal the
    run that never stopped, bit for bit."""
    from tests.support.training import checkpoint_dir

    from lmstream.train import checkpoint as ckpt

    corpus = write_kjv_corpus(tmp_path, 10, 300)
    cfg = tiny_training_config(corpus, 48, **{
        "data.batch_size": 1, "data.num_workers": 8, "data.sequence_length": 64,
        "data.validation_documents": 2, "model.residual_dropout": 0.1,
        "runtime.checkpoint": {"every_n_steps": 16, "max_keep": 5, "async_save": False},
    })  # fmt: skip
    ref, resumed = tmp_path / "ref", tmp_path / "resumed"
    assert train_in_process(write_run(ref, cfg)) == 0
    assert max(logged(ref, "epoch").values()) >= 1
    mid = str(checkpoint_dir(ref, 16))
    assert train_in_process(write_run(resumed, cfg), "--resume", mid) == 0
    got, want = logged(resumed, "loss"), logged(ref, "loss")
    assert sorted(got) == list(range(17, 49)) and all(got[s] == want[s] for s in got)
    a = ckpt.load_model_state(checkpoint_dir(ref, 48))[0]
    b = ckpt.load_model_state(checkpoint_dir(resumed, 48))[0]
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_sigkill_mid_run_with_8_workers_and_z_loss_chunked_resumes_bit_exact(tmp_path):
    """A real `lmstream train` child with 8 loader workers (numpy hand-over, niced), the z-loss
    on the chunked loss and one-row micro-batches accumulated 2 at a time, SIGKILLed between
    steps after step 9 and resumed: its final weights equal those of the run never stopped."""
    import signal

    from tests.reliability.support import (
        assert_same_weights,
        logged_steps,
        start_train,
        tiny_config,
        wait_until,
    )

    corpus = write_kjv_corpus(tmp_path, 10, 300)
    cfg = tiny_config(corpus, **{
        "data.batch_size": 1, "data.num_workers": 8, "data.validation_documents": 2,
        "optimizer.z_loss": 1e-3, "runtime.chunked_loss": True,
    })  # fmt: skip
    reference, run = tmp_path / "reference", tmp_path / "run"
    assert train_in_process(write_run(reference, cfg)) == 0
    config = write_run(run, cfg)
    proc = start_train(config)
    try:
        assert wait_until(proc, lambda: max(logged_steps(run), default=0) >= 9)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert train_in_process(config, "--resume") == 0
    assert max(logged(reference, "epoch").values()) >= 1
    assert_same_weights(run, reference)
