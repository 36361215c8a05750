"""A source of weight 0 is never drawn: it only validates (``val_loss/NAME`` of a domain the run
does not train on). Its holdout may take all of it; that must not refuse the run, as it did:
"data source 'b': data.validation_documents: 5 holds out 3 of the source's 3 documents leaves 0
to train on, fewer than the 2 data workers" (orchestrate wrote that recipe for a small
weight-0 source, whose size its tokenizer sample never learns)."""

from __future__ import annotations

from tests.unit.data.test_mixed_source_rules import (
    B,
    held_out,
    tokenizer,  # noqa: F401 (the fixture)
    trained,
    training_config,
    write_mixture,
)


def test_a_weight_zero_source_held_out_whole_only_validates(tmp_path, tokenizer):  # noqa: F811
    run = tmp_path / "run"
    clean = write_mixture(run, tmp_path / "data", b__max_samples=3, b__weight=0.0)
    cfg = training_config(run, tokenizer, workers=2)
    assert held_out(cfg, tokenizer, run)["b"] == clean["b"][:3]
    ids, _ = trained(cfg, tokenizer, run, batches=4)
    assert ids and all(i < B for i in ids)  # only source a trains
