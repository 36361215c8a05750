"""A real mixture run resumed with new weights: the weight-change line says what best/ compares
with, best manifests hold each source's val_loss and the weights, and the best kept is the one
whose per-source losses, averaged with the new weights, are lowest."""

from __future__ import annotations

import json

import pytest
from tests.support.mixture import mixture_config, write_sources
from tests.support.training import train_in_process, write_run

from lmstream.train import checkpoint as ck

pytestmark = pytest.mark.slow


def test_resume_with_new_weights_keeps_the_best_by_the_new_weights(tmp_path, capsys):
    paths = write_sources(tmp_path, {"a": 200, "b": 100})
    every = {"runtime.evaluation": {"every_n_steps": 4, "max_batches": 2, "best": {"max_keep": 1}},
             "runtime.checkpoint": {"every_n_steps": 4, "async_save": False}}  # fmt: skip
    run = tmp_path / "run"
    first = mixture_config(tmp_path, paths, {"a": 0.9, "b": 0.1}, 4, **every)
    assert train_in_process(write_run(run, first)) == 0
    new = {"a": 0.1, "b": 0.9}
    config = write_run(run, mixture_config(tmp_path, paths, new, 12, **every))
    assert train_in_process(config, "--resume") == 0
    out = capsys.readouterr().out
    (line,) = [x for x in out.splitlines() if "data mixture changed on resume" in x]
    assert "best/ compares with its checkpoints' per-source val_loss re-weighted" in line
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    evals = {r["step"]: (r["val_loss/a"], r["val_loss/b"]) for r in records if "val_loss/a" in r}
    assert sorted(evals) == [4, 8, 12]
    reweighted = {step: new["a"] * a + new["b"] * b for step, (a, b) in evals.items()}
    (best,) = ck.list_checkpoints(run / "best")
    manifest = ck.read_manifest(best)
    assert manifest["step"] == min(reweighted, key=reweighted.__getitem__)
    assert manifest["weights"] == pytest.approx(new)
    assert manifest["val_losses"] == {
        "a": evals[manifest["step"]][0],
        "b": evals[manifest["step"]][1],
    }
