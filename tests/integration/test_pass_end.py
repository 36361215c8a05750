"""The steps at the end of a pass (issue #20): a worker's padded final batch and a drained rank's
idle micro-batches carry no tokens, so the logged loss and ``tokens_seen`` must not count them.

One epoch of a small corpus with 2 loader workers and gradient accumulation chosen so that the
pass's micro-batches do not fill the last step: that step holds the padded final batches and at
least one idle micro-batch. The learning rate is tiny, so every step's loss per real token is
about the same (near log(vocab)). Before the fix, ``tokens_seen`` counted every micro-batch of
every step as full (2 ranks: tests/distributed/test_epochs.py).
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tests.support.training import pass_tokens, tiny_training_config, write_kjv_corpus, write_run

from lmstream.cli import main as cli_main

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_kjv_corpus(tmp_path_factory.mktemp("corpus"), 60, 300)


def _run(
    corpus: Path, run_dir: Path, epochs: int, accum, **overrides
) -> tuple[list[dict], int, int]:
    """Train ``epochs`` passes with 2 loader workers, ``accum(micro-batches per pass)``
    micro-batches per step; returns (metrics records, micro-batches and real tokens per pass)."""
    cfg = tiny_training_config(
        corpus,
        None,
        **{
            "scheduler.total_epochs": epochs,
            "optimizer.learning_rate": 1e-6,
            "data.num_workers": 2,
            "data.validation_documents": 4,
            **overrides,
        },
    )
    micro, tokens = pass_tokens(write_run(run_dir, cfg))
    cfg["data"]["gradient_accumulation_steps"] = accum(micro)
    write_run(run_dir, cfg)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert cli_main(["train", "--config", str(run_dir / "training.yaml")]) == 0
    finally:
        torch.set_num_threads(threads)
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return records, micro, tokens


def test_the_last_step_of_a_pass_logs_real_tokens_only(corpus, tmp_path):
    def accum(micro: int) -> int:  # one that leaves the pass's last step partly idle
        return next(a for a in (2, 3, 4, 5) if micro % a and micro > a)

    records, micro, tokens = _run(corpus, tmp_path / "run", 1, accum)
    steps = [r for r in records if "loss" in r]
    accum = accum(micro)
    assert len(steps) == -(-micro // accum)  # the last step partly idle
    # Padding and idle micro-batches are not tokens seen.
    assert steps[-1]["tokens_seen"] == tokens
    # The loss is per real token at every step, the pass's last one included.
    median = statistics.median(r["loss"] for r in steps)
    assert all(abs(r["loss"] - median) < 0.05 * median for r in steps), [r["loss"] for r in steps]


def test_a_pass_shorter_than_one_step_trains_one_step_per_epoch(corpus, tmp_path):
    """gradient_accumulation_steps above a pass's micro-batches: each epoch is one step (the
    rest of it idle). Before, scheduler.total_epochs refused the run ("one epoch holds fewer
    batches than one optimizer step"), a leftover of the time when a short pass rolled into the
    next epoch inside the step.

    Evaluation every step and every epoch: step 1, epoch 0's last, is evaluated once (before,
    again at the epoch's end, the same weights twice), step 2 by the final evaluation."""
    every = {"every_n_steps": 1, "every_n_epochs": 1, "max_batches": 2}
    records, _, tokens = _run(
        corpus, tmp_path / "run", 2, lambda micro: micro + 1, **{"runtime.evaluation": every}
    )
    steps = [r for r in records if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2]
    assert [r["epoch"] for r in steps] == [0, 1]
    assert steps[-1]["tokens_seen"] == 2 * tokens
    assert [r["step"] for r in records if "val_loss" in r] == [1, 2]


def test_a_run_ended_by_total_epochs_is_evaluated_at_its_end(corpus, tmp_path):
    """total_steps above what total_epochs allows: the run ends at the epoch's end (the loop
    sees every rank idle) and, as every run, with a final evaluation, even when its last step
    was already saved by checkpoint.every_n_steps (before, the final evaluation was skipped as
    if that save had been the final one)."""
    records, _, _ = _run(
        corpus,
        tmp_path / "run",
        1,
        lambda micro: micro + 1,
        **{
            "scheduler.total_steps": 50,
            "runtime.checkpoint": {"every_n_steps": 1, "async_save": False},
        },
    )
    assert [r["step"] for r in records if "loss" in r] == [1]
    assert [r["step"] for r in records if "val_loss" in r] == [1]


def test_stop_and_resume_at_an_epoch_boundary_is_bit_exact(corpus, tmp_path):
    """A run stopped at the last step of epoch 0 (its loader not yet told the pass ended) or at
    the first of epoch 1, resumed once or twice, logs the uninterrupted run's loss, tokens_seen
    and epoch at every step and ends with its weights, with 2 loader workers and a partly idle
    last step per pass."""
    cfg = tiny_training_config(
        corpus,
        100,
        **{
            "scheduler.strategy": "constant_with_warmup",  # a shorter run is a prefix
            "data.num_workers": 2,
            "data.validation_documents": 4,
            "runtime.checkpoint": {"every_n_steps": None, "async_save": False},
        },
    )
    micro, _ = pass_tokens(write_run(tmp_path / "probe", cfg))
    accum = next(a for a in (2, 3, 4, 5) if micro % a and micro > a)
    cfg["data"]["gradient_accumulation_steps"] = accum
    per_epoch = -(-micro // accum)
    total = 2 * per_epoch + 1

    def train(run_dir: Path, steps: int, *extra: str) -> None:
        cfg["scheduler"]["total_steps"] = steps
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            assert cli_main(["train", "--config", str(write_run(run_dir, cfg)), *extra]) == 0
        finally:
            torch.set_num_threads(threads)

    def logged(run_dir: Path) -> list[tuple]:
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
        records = [json.loads(x) for x in lines]
        return [
            (r["step"], r["loss"], r["tokens_seen"], r["epoch"]) for r in records if "loss" in r
        ]

    def weights(run_dir: Path) -> dict:
        return load_file(str(run_dir / "checkpoints" / f"step-{total:08d}" / "model.safetensors"))

    train(tmp_path / "full", total)
    want = logged(tmp_path / "full")
    assert [r[3] for r in want][per_epoch - 1 : per_epoch + 1] == [0, 1]
    for stops in ([per_epoch], [per_epoch, per_epoch + 1]):
        run_dir = tmp_path / f"run-{len(stops)}"
        train(run_dir, stops[0])
        for steps in [*stops[1:], total]:
            train(run_dir, steps, "--resume")
        assert logged(run_dir) == want, stops
        a, b = weights(run_dir), weights(tmp_path / "full")
        assert all(torch.equal(a[k], b[k]) for k in b)
