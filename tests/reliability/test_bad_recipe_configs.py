"""Bad values of the training-recipe fields (issue #15) through the real CLI: each is refused
with exit 2 and one line naming the field, and nothing is written."""

from __future__ import annotations

import pytest
from tests.reliability.support import tiny_config, tree
from tests.reliability.test_bad_configs import change
from tests.support.training import train_in_process

WSD = {"scheduler__strategy": "warmup_stable_decay"}

# (id, how to break it, words the one-line error must hold)
CASES = [
    ("qk_norm str", change(model__qk_norm="sometimes"), "model.qk_norm"),
    ("z_loss negative", change(optimizer__z_loss=-1e-4), "optimizer.z_loss"),
    ("z_loss above 1", change(optimizer__z_loss=2.0), "optimizer.z_loss"),
    ("algorithm lion", change(optimizer__algorithm="lion"), "optimizer.algorithm"),
    ("muon lr with adam_w", change(optimizer__muon_learning_rate=0.02), "muon_learning_rate"),
    ("muon lr 0", change(optimizer__algorithm="muon", optimizer__muon_learning_rate=0), "muon_learning_rate"),
    ("muon momentum 1", change(optimizer__algorithm="muon", optimizer__muon_momentum=1.0), "muon_momentum"),
    ("sgd momentum with muon", change(optimizer__algorithm="muon", optimizer__momentum=0.5), "optimizer.momentum"),
    ("strategy wsd", change(scheduler__strategy="wsd"), "scheduler.strategy"),
    ("wsd without a decay length", change(**WSD), "scheduler.decay_steps"),
    ("wsd with both lengths", change(**WSD, scheduler__decay_steps=2, scheduler__decay_fraction=0.2), "exactly one"),
    ("decay_fraction 0", change(**WSD, scheduler__decay_fraction=0), "scheduler.decay_fraction"),
    ("decay_fraction 1.5", change(**WSD, scheduler__decay_fraction=1.5), "scheduler.decay_fraction"),
    ("decay_steps 0", change(**WSD, scheduler__decay_steps=0), "scheduler.decay_steps"),
    ("warmup + decay > total", change(**WSD, scheduler__warmup_steps=2, scheduler__decay_steps=1000), "exceed total_steps"),
    ("warmup + decay_fraction > total", change(**WSD, scheduler__warmup_steps=2, scheduler__decay_fraction=1.0), "scheduler.decay_fraction: warmup"),
    ("separator outside the tokenizer's vocabulary", change(model__document_masking=True, model__document_separator_id=1000000), "model.document_separator_id: 1000000 is not a token id"),
    ("decay_shape exp", change(**WSD, scheduler__decay_steps=2, scheduler__decay_shape="exp"), "scheduler.decay_shape"),
    ("decay_steps with cosine", change(scheduler__decay_steps=2), "only used with strategy: warmup_stable_decay"),
    ("decay_shape with linear", change(scheduler__strategy="linear_with_warmup", scheduler__decay_shape="cosine"), "scheduler.decay_shape"),
    ("spike window 1", change(runtime__spike_guard={"window": 1}), "runtime.spike_guard.window"),
    ("spike sigma 0", change(runtime__spike_guard={"threshold_sigma": 0}), "threshold_sigma"),
    ("spike watch", change(runtime__spike_guard={"watch": "lr"}), "runtime.spike_guard.watch"),
    ("spike unknown key", change(runtime__spike_guard={"sigma": 3}), "runtime.spike_guard.sigma"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "words"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_recipe_field_exits_2_with_one_line(corpus, tmp_path, capsys, case, words):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    case(tiny_config(corpus), run_dir, corpus)
    written = tree(run_dir)
    code = train_in_process(run_dir / "training.yaml")
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("lmstream train: error: ") and words in lines[0], lines[0]
    assert tree(run_dir) == written, "a refused config wrote files"
