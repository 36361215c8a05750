"""`lmstream train` on a mixture by epochs, with 2 loader workers (issue #14's follow-up).

An epoch is one pass over the primary (largest-weight) source for every worker: the run ends
after ``scheduler.total_epochs`` passes, evaluates and checkpoints at each epoch's last step
(``every_n_epochs``), logs ``epoch/NAME``, and a run stopped at an epoch's last step or just
after it (by its total_steps, or SIGKILL) resumes bit-identical to the run that never stopped.
Before, a mixture's ``total_epochs`` with several data workers was refused.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from tests.integration.test_mixture_train import _kill_at, _losses, _records
from tests.reliability.support import assert_same_weights
from tests.support.mixture import mixture_config, write_sources
from tests.support.training import train_in_process, write_run

from lmstream.train import checkpoint as ckpt

pytestmark = pytest.mark.slow
WEIGHTS = {"a": 0.45, "b": 0.55}  # b (long documents) is the primary


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("mixepochs")
    return root, write_sources(root, {"a": 30, "b": 25}, files=2)


def _config(sources, **overrides) -> dict:
    root, paths = sources
    return mixture_config(root, paths, WEIGHTS, **{
        "scheduler.total_steps": None,
        "scheduler.total_epochs": 2,
        "scheduler.strategy": "constant_with_warmup",  # a shorter run is a prefix
        "data.validation_documents": 8,
        "data.num_workers": 2,
        "data.gradient_accumulation_steps": 2,
        "model.residual_dropout": 0.1,
        "runtime.checkpoint": {"every_n_steps": None, "every_n_epochs": 1, "async_save": False},
        "runtime.evaluation": {"every_n_steps": None, "every_n_epochs": 1, "max_batches": 2},
        **overrides,
    })  # fmt: skip


@pytest.fixture(scope="module")
def reference(sources, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("reference")
    assert train_in_process(write_run(run_dir, _config(sources))) == 0
    return run_dir


def _epoch_ends(run_dir: Path) -> list[int]:
    """The last step of each epoch, from the logged epochs."""
    epochs = [(r["step"], r["epoch"]) for r in _records(run_dir) if "loss" in r]
    ends = [s for (s, e), (_, after) in zip(epochs, epochs[1:], strict=False) if after > e]
    return [*ends, epochs[-1][0]]


def test_total_epochs_with_two_workers(reference):
    ends = _epoch_ends(reference)
    records = _records(reference)
    train = [r for r in records if "loss" in r]
    assert (
        len(ends) == 2
        and ends[0] >= 4
        and [r["step"] for r in train] == list(range(1, ends[1] + 1))
    )
    # The schedule's length is the first pass's steps x total_epochs: the second pass, whose
    # other-source documents differ, may be a few steps longer or shorter; the run ends with it.
    per_epoch = ckpt.load_trainer_state(ckpt.resolve_checkpoint(reference / "checkpoints"))[
        "state"]["steps_per_epoch"]  # fmt: skip
    assert per_epoch == ends[0] and abs(ends[1] - 2 * per_epoch) <= 2
    assert train[-1]["epoch/b"] == 1  # the primary's second pass, no more
    assert train[-1]["epoch/a"] >= 1  # a rolled over on its own inside the epochs
    # Evaluation and checkpoint at each epoch's last step (every_n_epochs), once each.
    assert [r["step"] for r in records if "val_loss" in r] == ends
    saved = [json.loads((p / ckpt.MANIFEST_FILE).read_text())["step"]
             for p in ckpt.list_checkpoints(reference / "checkpoints")]  # fmt: skip
    assert saved == ends
    last = train[-1]
    assert last["tokens_seen/a"] + last["tokens_seen/b"] == last["tokens_seen"]
    assert abs(last["tokens_seen/b"] / last["tokens_seen"] - WEIGHTS["b"]) < 0.05


@pytest.mark.parametrize("after", [0, 1], ids=["at", "after"])
def test_stopped_at_or_just_after_an_epoch_boundary_resumes_bit_exact(
    sources, reference, tmp_path, after
):
    """Stopped by its total_steps at epoch 0's last step (its loader not yet told the pass
    ended) or at epoch 1's first, then resumed with total_epochs: the reference's losses,
    epochs and weights."""
    end, last = _epoch_ends(reference)
    run_dir = tmp_path / "run"
    cfg = _config(sources, **{"scheduler.total_steps": end + after})
    assert train_in_process(write_run(run_dir, cfg)) == 0
    assert train_in_process(write_run(run_dir, _config(sources)), "--resume") == 0
    assert _losses(run_dir) == _losses(reference)
    epochs = {r["step"]: (r["epoch"], r["epoch/a"], r["epoch/b"]) for r in _records(run_dir)
              if "loss" in r}  # fmt: skip
    assert epochs == {r["step"]: (r["epoch"], r["epoch/a"], r["epoch/b"])
                      for r in _records(reference) if "loss" in r}  # fmt: skip
    assert_same_weights(run_dir, reference, last)
    # Each step evaluated once: the first run's final evaluation at `end` is not redone as
    # epoch 0's end when the resume learns the pass ended (before, step `end` had two).
    evaluated = [r["step"] for r in _records(run_dir) if "val_loss" in r]
    expected = {r["step"] for r in _records(reference) if "val_loss" in r} | {end + after}
    assert evaluated == sorted(expected), evaluated


def test_sigkill_around_the_epoch_boundary_resumes_bit_exact(sources, reference, tmp_path):
    """Checkpoints every step, 2 workers, SIGKILL just after epoch 0's end and again in epoch
    1: the second resume ends with the reference's losses and weights."""
    end, last = _epoch_ends(reference)
    every = {"runtime.checkpoint": {"every_n_steps": 1, "max_keep": 3, "async_save": False}}
    run_dir = tmp_path / "run"
    config = write_run(run_dir, _config(sources, **every))
    _kill_at(config, run_dir, end + 1)
    _kill_at(config, run_dir, end + 3, "--resume")
    assert train_in_process(config, "--resume") == 0
    assert _losses(run_dir) == _losses(reference)
    assert_same_weights(run_dir, reference, last)


def test_a_run_whose_last_pass_is_shorter_than_planned_ends_done(sources, tmp_path, capsys):
    """The schedule's steps are the first pass's x total_epochs; here the second pass is a
    step shorter (b at 0.6: 31 then 30 steps). The run still ends when its last epoch ends,
    and its summary says it is done (and what to raise), not that it stopped short of its
    planned steps; so does the resume that finds nothing to do."""
    cfg = _config(sources, **{
        "data.gradient_accumulation_steps": 1,
        "data.mixture": [{**m, "weight": {"a": 0.4, "b": 0.6}[m["name"]]}
                         for m in _config(sources)["data"]["mixture"]],
    })  # fmt: skip
    run_dir = tmp_path / "run"
    config = write_run(run_dir, cfg)
    assert train_in_process(config) == 0
    per_epoch = ckpt.load_trainer_state(ckpt.resolve_checkpoint(run_dir / "checkpoints"))[
        "state"]["steps_per_epoch"]  # fmt: skip
    steps = [r["step"] for r in _records(run_dir) if "loss" in r]
    assert steps[-1] < 2 * per_epoch  # the case at hand: fewer steps than the schedule's
    out = capsys.readouterr().out
    assert "== stopped" not in out, out[-1500:]
    assert "== done: epoch 2 of 2" in out
    assert "after raising scheduler.total_epochs" in out
    assert train_in_process(config, "--resume") == 0
    out = capsys.readouterr().out
    assert "nothing to do" in out and "== done: epoch 2 of 2" in out


def test_a_last_pass_longer_than_planned_says_its_total_is_an_estimate(sources, tmp_path, capsys):
    """Here the second pass is a step longer than the first (a at 0.42): the run goes one step
    past the first pass's steps x total_epochs. Its progress lines say that total is an
    estimate (``step 63/~62``), rather than reading as a step beyond the planned total."""
    cfg = _config(sources, **{
        "data.gradient_accumulation_steps": 1,
        "data.mixture": [{**m, "weight": {"a": 0.42, "b": 0.58}[m["name"]]}
                         for m in _config(sources)["data"]["mixture"]],
    })  # fmt: skip
    assert train_in_process(write_run(tmp_path / "run", cfg)) == 0
    out = capsys.readouterr().out
    lines = re.findall(r"^step (\d+)/(~?)(\d+) ", out, re.M)
    assert lines and max(int(s) - int(t) for s, _, t in lines) > 0, out[-1500:]  # past it
    assert all(mark == "~" for _, mark, _ in lines), out[-1500:]
