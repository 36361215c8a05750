"""Non-finite losses injected at chosen steps (LMSTREAM_FAULT_NONFINITE_STEPS, lmstream.train.faults).

Scattered ones are skipped and counted and the run finishes; a persistent one stops the run
with a clear error after runtime.max_nonfinite_steps in a row, keeping the last good checkpoint,
from which `--resume` (fault gone) finishes bit-identical to the uninterrupted run.
"""

from __future__ import annotations

import json

import pytest
import torch
from tests.reliability.support import (
    TOTAL,
    assert_checkpoints_complete,
    assert_same_weights,
    final_weights,
    logged_steps,
    tiny_config,
)
from tests.support.training import train_in_process, write_run

from lmstream.errors import ConfigError
from lmstream.train import checkpoint as ckpt
from lmstream.train.faults import NONFINITE_ENV, nonfinite_loss

pytestmark = pytest.mark.slow


def test_scattered_nonfinite_losses_are_skipped_and_counted(corpus, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(NONFINITE_ENV, "5,6,13")
    run_dir = tmp_path / "run"
    cfg = tiny_config(corpus, **{"runtime.max_nonfinite_steps": 3})
    assert train_in_process(write_run(run_dir, cfg)) == 0
    out = capsys.readouterr().out
    assert out.count("update skipped") == 3
    assert "(2 in a row, 2 in total)" in out and "(1 in a row, 3 in total)" in out
    assert logged_steps(run_dir) == list(range(1, TOTAL + 1))  # every step once, none lost
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["skipped_steps"] for r in records if "loss" in r][-1] == 3
    trainer = ckpt.load_trainer_state(run_dir / "checkpoints")
    assert trainer["state"]["skipped_steps"] == 3
    assert all(torch.isfinite(w).all() for w in final_weights(run_dir).values())


def test_persistent_nonfinite_stops_keeping_the_last_good_checkpoint(
    corpus, reference, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv(NONFINITE_ENV, "11-")
    run_dir = tmp_path / "run"
    config = write_run(run_dir, tiny_config(corpus, **{"runtime.max_nonfinite_steps": 3}))
    assert train_in_process(config) == 5
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "3 consecutive non-finite losses" in err[0], err
    assert "stopped at step 10" in err[0] and "last good checkpoint is kept" in err[0]
    folders = assert_checkpoints_complete(run_dir / "checkpoints")
    assert folders[-1].name == "step-00000010"
    monkeypatch.delenv(NONFINITE_ENV)  # the cause is fixed: resume from the last good step
    assert train_in_process(config, "--resume") == 0
    assert_same_weights(run_dir, reference)


def test_hook_parses_ranges_and_refuses_nonsense(monkeypatch):
    one = torch.tensor(1.0)
    monkeypatch.setenv(NONFINITE_ENV, "2, 4-5,9-")
    hit = [a for a in range(1, 12) if not torch.isfinite(nonfinite_loss(one, a))]
    assert hit == [2, 4, 5, 9, 10, 11]
    monkeypatch.delenv(NONFINITE_ENV)
    assert nonfinite_loss(one, 2) is one  # inert when unset
    for bad in ("x", "0", "5-3"):
        monkeypatch.setenv(NONFINITE_ENV, bad)
        with pytest.raises(ConfigError, match=NONFINITE_ENV):
            nonfinite_loss(one, 1)
