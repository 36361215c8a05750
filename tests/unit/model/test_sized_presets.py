"""Sized presets (issue #15): `orchestrate --model-size S` writes the learning rate of S's row
of the table, and `--tokens N|chinchilla` the total_steps that spend N tokens in the written
batch; `--model-size 1b` alone still writes the seed's values."""

from __future__ import annotations

import pytest

from lmstream.errors import ConfigError
from lmstream.model.presets import LEARNING_RATES, PRESETS, preset_parameters
from lmstream.orchestrate import training_yaml_dict
from lmstream.orchestrate_options import OrchestrateOptions
from lmstream.workspace import ExperimentPaths


def _yaml(tmp_path, **flags) -> dict:
    opts = OrchestrateOptions(experiment="e", data_files=["x.jsonl"], **flags)
    return training_yaml_dict(ExperimentPaths.create(tmp_path, "e"), opts, ["x.jsonl"])


@pytest.mark.parametrize(
    ("size", "lr"),
    [("125m", 6.0e-4), ("350m", 3.0e-4), ("760m", 2.5e-4), ("1b", 1.8e-4), ("3b", 1.6e-4)],
)
def test_learning_rate_by_size(tmp_path, size, lr):
    cfg = _yaml(tmp_path, model_size=size)
    assert cfg["optimizer"]["learning_rate"] == lr
    assert cfg["scheduler"]["min_lr"] == pytest.approx(lr / 10, rel=1e-12)
    assert cfg["scheduler"]["total_steps"] == 300000  # no budget: the seed's length


def test_1b_without_flags_is_the_seed_recipe(tmp_path):
    cfg = _yaml(tmp_path)
    assert cfg["optimizer"]["learning_rate"] == 1.8e-4 and cfg["scheduler"]["min_lr"] == 1.8e-5
    assert cfg["scheduler"]["warmup_steps"] == 3000 and cfg["scheduler"]["total_steps"] == 300000


def test_tiny_keeps_its_measured_cpu_recipe(tmp_path):
    assert "tiny" not in LEARNING_RATES and "tiny" in PRESETS
    assert _yaml(tmp_path, model_size="tiny")["optimizer"]["learning_rate"] == 2.0e-3


def test_token_budget_sets_total_steps_from_the_batch(tmp_path):
    cfg = _yaml(tmp_path, model_size="125m", tokens="2e9")
    per_step = 2 * 32 * 2048  # the seed's batch_size x accumulation x sequence_length
    assert cfg["scheduler"]["total_steps"] == -(-2_000_000_000 // per_step) == 15259
    assert cfg["scheduler"]["warmup_steps"] == 3000
    tiny = _yaml(tmp_path, model_size="tiny", tokens="51200")  # CPU recipe: 8 x 128 per step
    assert tiny["scheduler"]["total_steps"] == 50 and tiny["scheduler"]["warmup_steps"] == 10
    short = _yaml(tmp_path, model_size="125m", tokens="1e8")  # 763 steps: warmup must fit
    assert short["scheduler"]["total_steps"] == 763 and short["scheduler"]["warmup_steps"] == 76


def test_token_budget_counts_the_global_batch_of_all_ranks(tmp_path):
    """With 8 GPUs each optimizer step takes 8 ranks' batches: the budget is spent in an
    eighth of the steps (before, total_steps was one rank's and 8 ranks trained 8x the budget)."""
    one = _yaml(tmp_path, model_size="125m", tokens="2e9")["scheduler"]["total_steps"]
    eight = _yaml(tmp_path, model_size="125m", tokens="2e9", ranks=8)["scheduler"]["total_steps"]
    assert eight == -(-2_000_000_000 // (2 * 32 * 2048 * 8)) == 1908 and one == 15259


def test_chinchilla_budget_is_20_tokens_per_parameter(tmp_path):
    cfg = _yaml(tmp_path, model_size="1b", tokens="chinchilla")
    params = preset_parameters("1b", 50000)
    assert 1.0e9 < params < 1.2e9
    assert cfg["scheduler"]["total_steps"] == -(-20 * params // (2 * 32 * 2048))
    assert cfg["optimizer"]["learning_rate"] == 1.8e-4


@pytest.mark.parametrize("bad", ["lots", "0", "-5", "inf", "nan"])
def test_bad_token_budget_names_the_flag(bad):
    with pytest.raises(ConfigError, match=r"^--tokens: "):
        OrchestrateOptions(experiment="e", data_files=["x.jsonl"], tokens=bad)
