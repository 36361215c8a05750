"""best/ after a resume that changed a mixture's weights: a best checkpoint's val_loss was
averaged with the old weights, so it is compared with its per-source losses re-weighted with the
new ones (the val_loss the resumed run would log for it); a best that lacks a source evaluated
now (added since) no longer competes and stays in the folder."""

from __future__ import annotations

import pytest
from tests.unit.train.test_checkpoint import _state

from lmstream.train import checkpoint as ck
from lmstream.train.checkpointer import BestCheckpoints


def _keep(best: BestCheckpoints, step: int, losses: dict[str, float], cfg) -> bool:
    val = sum(best.weights[n] * loss for n, loss in losses.items()) / sum(best.weights.values())
    if not best.qualifies(val, losses):
        return False
    best.keep(val, lambda d, extra: ck.save_checkpoint(
        d, step, _state(float(step)), cfg, {"step": step}, extra_manifest=extra
    ), extra=best.manifest_keys(val, losses))  # fmt: skip
    return True


def test_a_weight_change_re_weights_the_best_it_compares_with(tmp_path, small_config):
    directory = tmp_path / "best"
    before = BestCheckpoints(directory, 1, {"a": 0.9, "b": 0.1})
    assert _keep(before, 8, {"a": 0.5, "b": 5.5}, small_config)  # val_loss 1.0
    manifest = ck.read_manifest(directory / "step-00000008")
    assert manifest["val_losses"] == {"a": 0.5, "b": 5.5}
    assert manifest["weights"] == {"a": 0.9, "b": 0.1}

    after = BestCheckpoints(directory, 1, {"a": 0.1, "b": 0.9})
    # step 8 under the new weights: 0.1 x 0.5 + 0.9 x 5.5 = 5.0, not the 1.0 it logged
    assert [(round(v, 9), p.name) for v, p in after.entries()] == [(5.0, "step-00000008")]
    # an evaluation of 4.02 (a 0.6, b 4.4) is better than 5.0: it is kept, step 8 pruned
    assert _keep(after, 12, {"a": 0.6, "b": 4.4}, small_config)
    assert [p.name for p in ck.list_checkpoints(directory)] == ["step-00000012"]
    assert after.entries()[0][0] == pytest.approx(4.02)


def test_a_source_added_since_restarts_the_comparison(tmp_path, small_config):
    directory = tmp_path / "best"
    assert _keep(BestCheckpoints(directory, 1, {"a": 0.5, "b": 0.5}), 8, {"a": 1.0, "b": 1.0},
                 small_config)  # fmt: skip
    grown = BestCheckpoints(directory, 1, {"a": 0.3, "b": 0.3, "c": 0.4})
    assert grown.entries() == []  # step 8 has no val_loss for c: it cannot be compared
    assert _keep(grown, 12, {"a": 2.0, "b": 2.0, "c": 9.0}, small_config)
    # the new best is kept, and the old one stays (it is not pruned by a comparison it is not in)
    assert [p.name for p in ck.list_checkpoints(directory)] == ["step-00000008", "step-00000012"]


def test_unchanged_weights_and_one_source_use_the_logged_val_loss(tmp_path, small_config):
    directory = tmp_path / "best"
    weights = {"a": 0.7, "b": 0.3}
    assert _keep(BestCheckpoints(directory, 2, weights), 4, {"a": 1.0, "b": 3.0}, small_config)
    ((loss, _),) = BestCheckpoints(directory, 2, dict(weights)).entries()
    assert loss == ck.read_manifest(directory / "step-00000004")["val_loss"]
    assert BestCheckpoints(directory, 2).entries()[0][0] == loss  # one source: as logged
