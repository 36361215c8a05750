"""The training.yaml / streaming_config.json schema: the seed loads, bad configs name their field."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml
from tests.support.training import DELETE, apply_overrides

from lmstream.cli import main
from lmstream.config import (
    StreamingConfig,
    dump_streaming_config,
    dump_training_config,
    load_special_tokens,
    load_streaming_config,
    load_training_config,
    parse_training_config,
)
from lmstream.errors import ConfigError


def _seed(seed_yaml_text: str) -> dict:
    return yaml.safe_load(seed_yaml_text)


def test_seed_yaml_loads_verbatim(tmp_path: Path, seed_yaml_text: str) -> None:
    path = tmp_path / "training.yaml"
    path.write_text(seed_yaml_text)
    cfg = load_training_config(path)
    assert cfg.model.hidden_size == 2048 and cfg.model.num_layers == 20
    # nulls mean documented defaults, exposed as properties
    assert cfg.model.attn_dropout is None and cfg.model.attention_dropout == 0.0
    assert cfg.model.rope_theta is None and cfg.model.theta == 10000.0
    assert cfg.model.rope_layout == "standard" and cfg.model.kv_heads == 32
    assert cfg.scheduler.max_lr is None and cfg.peak_lr == pytest.approx(1.8e-4)
    assert cfg.min_lr == pytest.approx(1.8e-5)
    assert cfg.runtime.precision == "bf16"
    assert cfg.runtime.checkpoint.directory == Path(
        "/workspace/runs/runpod-1b-streaming/checkpoints"
    )
    assert cfg.runtime.evaluation.best.max_keep == 2
    assert cfg.runtime.logging.tensorboard_flush_every_n == 100
    assert cfg.tokens_per_step() == 2 * 32 * 2048
    # unset path defaults land in the YAML's own folder
    assert cfg.runtime.logging.metrics_jsonl == tmp_path / "metrics.jsonl"


def test_round_trip_is_identical(tmp_path: Path, seed_yaml_text: str) -> None:
    path = tmp_path / "training.yaml"
    path.write_text(seed_yaml_text)
    cfg = load_training_config(path)
    out = tmp_path / "again" / "training.yaml"
    out.parent.mkdir()
    dump_training_config(cfg, out)
    again = load_training_config(out)
    assert again == cfg
    assert dump_training_config(again) == dump_training_config(cfg)


def test_relative_paths_resolve_against_yaml_folder(tmp_path: Path, seed_yaml_text: str) -> None:
    data = _seed(seed_yaml_text)
    data["tokenizer"]["tokenizer_json"] = "../../artifacts/tokenizer/x/tokenizer.json"
    data["runtime"]["checkpoint"]["directory"] = "ckpts"
    data["data"]["train_shards"] = ["corpus/*.jsonl", "https://example.org/a.jsonl"]
    run = tmp_path / "runs" / "x"
    run.mkdir(parents=True)
    (run / "training.yaml").write_text(yaml.safe_dump(data))
    cfg = load_training_config(run / "training.yaml")
    assert (
        cfg.tokenizer.tokenizer_json.resolve()
        == (tmp_path / "artifacts/tokenizer/x/tokenizer.json").resolve()
    )
    assert cfg.runtime.checkpoint.directory == run / "ckpts"
    assert cfg.data.train_shards == [str(run / "corpus/*.jsonl"), "https://example.org/a.jsonl"]


# (dotted key to change, new value, dotted path expected in the error, words expected in it)
BAD_CONFIGS = [
    ("model.hidden_size", "big", "model.hidden_size", "integer"),
    ("model.hidden_size", 0, "model.hidden_size", "greater than or equal to 1"),
    ("model.hidden_size", 2050, "model.hidden_size", "divisible by num_attention_heads"),
    ("model.num_key_value_heads", 5, "model.num_key_value_heads", "divisible"),
    ("model.num_layers", DELETE, "model.num_layers", "missing"),
    ("model.num_layer", 4, "model.num_layer", "did you mean 'num_layers'"),
    ("model.rope_mode", "yarn", "model.rope_mode", "standard"),
    ("model.rope_theta", -1.0, "model.rope_theta", "greater than 0"),
    ("model.attn_dropout", 1.5, "model.attn_dropout", "less than 1"),
    ("model.activation", "relu", "model.activation", "gelu"),
    ("model.max_position_embeddings", 1024, "data.sequence_length", "exceeds"),
    ("tokenizer.tokenizer_json", DELETE, "tokenizer.tokenizer_json", "missing"),
    ("tokenizer.vocab_file", "x", "tokenizer.vocab_file", "unknown key"),
    ("data.batch_size", -2, "data.batch_size", "greater than or equal to 1"),
    ("data.batch_size", 2.5, "data.batch_size", "integer"),
    (
        "data.gradient_accumulation_steps",
        0,
        "data.gradient_accumulation_steps",
        "greater than or equal to 1",
    ),
    ("data.num_workers", "eight", "data.num_workers", "integer"),
    ("data.shuffle_buffer", 10, "data.shuffle_buffer", "did you mean 'shuffle_buffer_size'"),
    ("data.train_shards", "a.jsonl", "data.train_shards", "list"),
    ("optimizer.algorithm", "adam", "optimizer.algorithm", "adam_w"),
    ("optimizer.learning_rate", 0, "optimizer.learning_rate", "greater than 0"),
    ("optimizer.beta2", 1.0, "optimizer.beta2", "less than 1"),
    ("optimizer.epsilon", "tiny", "optimizer.epsilon", "number"),
    ("scheduler.strategy", "cosine", "scheduler.strategy", "cosine_with_warmup"),
    ("scheduler.warmup_steps", 400000, "scheduler.warmup_steps", "smaller than total_steps"),
    ("scheduler.min_lr", 1.0, "scheduler.min_lr", "above the peak"),
    ("scheduler.total_steps", None, "scheduler.total_steps", "total_epochs"),
    ("runtime.precision", "fp4", "runtime.precision", "fp32"),
    ("runtime.seed", -1, "runtime.seed", "greater than or equal to 0"),
    ("runtime.log_every_n_steps", 0, "runtime.log_every_n_steps", "greater than or equal to 1"),
    ("runtime.checkpoint.max_keep", 0, "runtime.checkpoint.max_keep", "greater than or equal to 1"),
    (
        "runtime.checkpoint.every_n_step",
        10,
        "runtime.checkpoint.every_n_step",
        "did you mean 'every_n_steps'",
    ),
    ("runtime.evaluation.best.max_keep", "two", "runtime.evaluation.best.max_keep", "integer"),
    (
        "runtime.evaluation.max_batches",
        0,
        "runtime.evaluation.max_batches",
        "greater than or equal to 1",
    ),
    ("runtime.logging.enable_stdout", "maybe", "runtime.logging.enable_stdout", "boolean"),
    (
        "runtime.logging.tensorboard_flush_every_n",
        0,
        "runtime.logging.tensorboard_flush_every_n",
        "greater than or equal to 1",
    ),
    ("runtime.parallelism", "tp", "runtime.parallelism", "ddp"),
    ("runtime.checkpoint", "every step", "runtime.checkpoint", "dictionary"),
    ("trainer", {}, "trainer", "unknown key"),
    ("optimizer", DELETE, "optimizer", "missing"),
]


@pytest.mark.parametrize(
    ("key", "value", "path", "words"),
    BAD_CONFIGS,
    ids=[f"{k}={v!r}"[:40] for k, v, *_ in BAD_CONFIGS],
)
def test_bad_config_names_the_field(
    tmp_path: Path, seed_yaml_text: str, key, value, path, words
) -> None:
    data = _seed(seed_yaml_text)
    apply_overrides(data, {key: value})
    cfg_path = tmp_path / "training.yaml"
    cfg_path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as info:
        load_training_config(cfg_path)
    lines = info.value.problems
    match = [line for line in lines if f": {path}: " in line]
    assert match, f"no error names {path}: {lines}"
    assert words in match[0], match[0]
    assert all(line.startswith(str(cfg_path) + ": ") for line in lines)


def test_every_problem_reported_once_per_line(seed_yaml_text: str) -> None:
    data = _seed(seed_yaml_text)
    data["data"]["batch_size"] = 0
    data["runtime"]["precision"] = "fp64"
    data["model"]["hidden"] = 1
    with pytest.raises(ConfigError) as info:
        parse_training_config(data, None, "cfg.yaml")
    assert len(info.value.problems) == 3


def test_broken_yaml_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "training.yaml"
    bad.write_text("model:\n  hidden_size: [1, 2\n")
    with pytest.raises(ConfigError, match=r"not valid YAML at line \d+"):
        load_training_config(bad)
    with pytest.raises(ConfigError, match="nothere.yaml: training config file not found"):
        load_training_config(tmp_path / "nothere.yaml")
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_training_config(bad)


def test_cli_config_error_is_one_line_per_problem_exit_2(
    tmp_path: Path, seed_yaml_text: str, capsys
) -> None:
    data = _seed(seed_yaml_text)
    data["optimizer"]["algorithm"] = "adamw"
    data["data"]["batch_size"] = "two"
    cfg_path = tmp_path / "training.yaml"
    cfg_path.write_text(yaml.safe_dump(data))
    assert main(["train", "--config", str(cfg_path), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2
    assert any("optimizer.algorithm" in line for line in err)
    assert any("data.batch_size" in line and "'two'" in line for line in err)
    assert "Traceback" not in "\n".join(err)


def test_streaming_config_round_trip_and_errors(tmp_path: Path) -> None:
    cfg = StreamingConfig(dataset="HuggingFaceFW/fineweb", split="train", max_samples=1000)
    path = tmp_path / "streaming_config.json"
    dump_streaming_config(cfg, path)
    assert load_streaming_config(path) == cfg
    data = json.loads(path.read_text())
    broken = copy.deepcopy(data)
    broken["max_sample"] = 3
    path.write_text(json.dumps(broken))
    with pytest.raises(ConfigError, match="max_sample: unknown key; did you mean 'max_samples'"):
        load_streaming_config(path)
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_streaming_config(path)


def test_special_tokens_file(tmp_path: Path) -> None:
    path = tmp_path / "special_tokens.txt"
    path.write_text('["<|endoftext|>", "<|pad|>"]\n')
    assert load_special_tokens(path) == ["<|endoftext|>", "<|pad|>"]
    path.write_text("<|endoftext|>\n")
    with pytest.raises(ConfigError, match="JSON list"):
        load_special_tokens(path)
    assert load_special_tokens(None) == ["<|endoftext|>", "<|pad|>"]


def test_dotdot_paths_are_normalised(tmp_path: Path, seed_yaml_text: str) -> None:
    """The same file written two ways must compare equal (resume checks compare paths)."""
    data = _seed(seed_yaml_text)
    run = tmp_path / "runs" / "x"
    run.mkdir(parents=True)
    data["data"]["train_shards"] = ["../x/corpus.jsonl"]
    data["tokenizer"]["tokenizer_json"] = "../../artifacts/tok/tokenizer.json"
    (run / "training.yaml").write_text(yaml.safe_dump(data))
    cfg = load_training_config(run / "training.yaml")
    assert cfg.data.train_shards == [str(run / "corpus.jsonl")]
    assert cfg.tokenizer.tokenizer_json == tmp_path / "artifacts/tok/tokenizer.json"
