"""Adversarial review of the training recipe (issue #15) through `lmstream orchestrate`: a
token budget of 20 tokens per parameter counts the parameters of the model that will train."""

from __future__ import annotations

import json

import yaml
from tests.integration.test_orchestrate_recipes import _corpus, _orchestrate

from lmstream.model.presets import preset_parameters


def test_chinchilla_budget_counts_the_tokenizers_vocabulary_not_the_one_asked(tmp_path, capsys):
    # A small corpus gives fewer tokens than --vocab-size asks; training sizes the embedding
    # from the tokenizer, so the budget must too (tiny: the embedding is most of the model).
    data = _corpus(tmp_path, 40)
    code, _, err = _orchestrate(
        tmp_path, capsys, "--stream", "--dataset", str(data), "--experiment", "c",
        "--model-size", "tiny", "--vocab-size", "50000", "--max-samples", "40",
        "--tokens", "chinchilla",
    )  # fmt: skip
    assert code == 0, err
    ws = tmp_path / "ws"
    vocab = len(json.loads((ws / "artifacts" / "tokenizer" / "c" / "vocab.json").read_text()))
    assert vocab < 50_000
    cfg = yaml.safe_load((ws / "runs" / "c" / "training.yaml").read_text())
    d = cfg["data"]
    per_step = d["batch_size"] * d["gradient_accumulation_steps"] * d["sequence_length"]
    want = -(-20 * preset_parameters("tiny", vocab) // per_step)
    assert cfg["scheduler"]["total_steps"] == want
