"""The dry-run's memory plan and MFU lines: the plan against peaks measured on an H200 by
bench/gpu_1b.py (BENCHMARKS.md, 2026-11-26), and the advice when it will not fit."""

from __future__ import annotations

import pytest
import torch
import yaml
from tests.conftest import FIXTURES
from tests.support.training import tiny_training_config, write_kjv_corpus, write_run

from lmstream.cli import main as cli_main
from lmstream.config import TrainingConfig
from lmstream.model.transformer import Transformer
from lmstream.train.memory_plan import plan_memory
from lmstream.train.speed_plan import describe_speed

VOCAB = 50_000


@pytest.fixture(scope="module")
def seed() -> TrainingConfig:
    raw = yaml.safe_load((FIXTURES / "seed_training.yaml").read_text())
    raw["model"]["vocab_size"] = VOCAB
    return TrainingConfig.model_validate(raw)


@pytest.mark.parametrize(
    ("batch", "ac", "measured_gib"),
    [(8, False, 50.4), (8, True, 26.0), (16, False, 83.9), (16, True, 39.4), (32, True, 66.1)],
)
def test_the_plan_is_within_15_percent_of_the_measured_peaks(seed, batch, ac, measured_gib):
    cfg = seed.model_copy(deep=True)
    cfg.runtime.activation_checkpointing = ac
    with torch.device("meta"):
        n = Transformer(cfg.model, VOCAB).num_parameters()
    planned = plan_memory(cfg, n, batch).total  # those runs computed the plain loss
    assert planned == pytest.approx(measured_gib * 2**30, rel=0.15)


def test_a_plan_that_does_not_fit_names_the_setting(seed):
    cfg = seed.model_copy(deep=True)
    cfg.data.batch_size = 64
    cfg.runtime.memory_limit_gb = 80.0
    lines = describe_speed(cfg, VOCAB)
    assert lines[0].startswith("MFU = ") and "6N + 12 L H T" in lines[0]
    assert any(line.startswith("memory plan per device: ") for line in lines)
    assert any("will not fit: set runtime.activation_checkpointing: true" in line for line in lines)
    cfg.data.batch_size = 2
    assert not any("will not fit" in line for line in describe_speed(cfg, VOCAB))


def test_the_dry_run_prints_the_formula_and_the_plan(tmp_path, capsys):
    corpus = write_kjv_corpus(tmp_path, 20, 300)
    config = write_run(tmp_path / "run", tiny_training_config(corpus, 2))
    assert cli_main(["train", "--config", str(config), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "MFU = tokens/s per GPU x FLOPs per token / peak" in out
    assert "MFU peak: no GPU here" in out and "memory plan per device: " in out
