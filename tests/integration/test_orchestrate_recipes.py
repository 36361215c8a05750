"""What `lmstream orchestrate` writes and says for a newcomer (issue #22): the tiny preset's CPU
recipe, the seed's 1b recipe kept as it was, and notes when the corpus gave less than asked."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml
from tests.support.training import write_kjv_corpus

from lmstream.cli import main
from lmstream.config import load_training_config
from lmstream.model.transformer import Transformer

# The seed's training.yaml (its data/optimizer/scheduler/runtime sections), which the 1b preset
# must keep field for field.
SEED_RECIPE = {
    "data": {
        "batch_size": 2, "gradient_accumulation_steps": 32, "shuffle_buffer_size": 65536,
        "num_workers": 8, "sequence_length": 2048,
    },
    "optimizer": {
        "algorithm": "adam_w", "learning_rate": 1.8e-4, "weight_decay": 0.01, "beta1": 0.9,
        "beta2": 0.95, "epsilon": 1.0e-8,
    },
    "scheduler": {
        "strategy": "cosine_with_warmup", "warmup_steps": 3000, "total_steps": 300000,
        "total_epochs": None, "min_lr": 1.8e-5, "max_lr": None,
    },
    "runtime": {
        "seed": 42, "precision": "bf16", "log_every_n_steps": 50,
        "checkpoint": {
            "directory": "checkpoints", "every_n_steps": 1500, "every_n_epochs": None,
            "max_keep": 10,
        },
        "evaluation": {
            "every_n_steps": 4500, "every_n_epochs": None, "max_batches": 32,
            "best": {"directory": "best", "max_keep": 2},
        },
        "logging": {
            "enable_stdout": True, "tensorboard": "tensorboard", "tensorboard_flush_every_n": 100,
        },
    },
}  # fmt: skip

# A floor for fp32 training on a 2-core CPU (measured ~90 GFLOP/s unloaded; halved for a
# machine shared with other jobs): the tiny recipe must finish within minutes even at this rate.
CPU_FLOPS_FLOOR = 40e9


def _orchestrate(tmp_path: Path, capsys, *args: str) -> tuple[int, str, str]:
    code = main(["orchestrate", "--no-progress", "--workspace", str(tmp_path / "ws"), *args])
    out, err = capsys.readouterr()
    return code, out, err


def _corpus(tmp_path: Path, n_docs: int) -> Path:
    write_kjv_corpus(tmp_path, n_docs, 300)
    return tmp_path / "train.jsonl"


def test_tiny_writes_a_cpu_recipe_that_finishes_in_minutes(tmp_path, capsys):
    from lmstream.model.presets import cpu_loader_workers

    data = _corpus(tmp_path, 300)
    code, _, err = _orchestrate(
        tmp_path, capsys, "--stream", "--dataset", str(data), "--experiment", "t",
        "--model-size", "tiny", "--vocab-size", "2000",
    )  # fmt: skip
    assert code == 0, err
    path = tmp_path / "ws" / "runs" / "t" / "training.yaml"
    cfg = load_training_config(path)
    d, s, rt = cfg.data, cfg.scheduler, cfg.runtime
    assert d.gradient_accumulation_steps == 1 and d.num_workers == cpu_loader_workers()
    assert rt.precision == "fp32" and s.warmup_steps < s.total_steps <= 300
    # Visible progress: a log line within the first few steps, evaluations and checkpoints
    # during the run, not only at its end.
    assert rt.log_every_n_steps <= 10
    assert rt.evaluation.every_n_steps < s.total_steps
    assert rt.checkpoint.every_n_steps < s.total_steps
    # Minutes on a CPU at orchestrate's default vocabulary (50k: the worst case).
    model = Transformer(cfg.model, 50_000)
    flops = model.flops_per_token(d.sequence_length) * cfg.tokens_per_step() * s.total_steps
    assert flops / CPU_FLOPS_FLOOR < 10 * 60
    assert "CPU recipe" in path.read_text()


def test_the_1b_preset_keeps_the_seed_recipe(tmp_path, capsys):
    data = _corpus(tmp_path, 100)
    code, _, err = _orchestrate(
        tmp_path, capsys, "--stream", "--dataset", str(data), "--experiment", "b",
        "--vocab-size", "300",
    )  # fmt: skip
    assert code == 0, err
    written = yaml.safe_load((tmp_path / "ws" / "runs" / "b" / "training.yaml").read_text())
    for section, expected in SEED_RECIPE.items():
        got = dict(written[section])
        if section == "data":
            got = {k: v for k, v in got.items() if k in expected}
        assert got == expected, section


def test_cpu_loader_workers_by_cores():
    from lmstream.model.presets import cpu_loader_workers

    assert [cpu_loader_workers(n) for n in (1, 2, 3, 8)] == [0, 0, 1, 1]


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="CPU affinity is Linux's")
def test_cpu_loader_workers_count_the_cores_the_process_may_use():
    """A process pinned to fewer cores than the host has (a container's cpuset, taskset)
    counts the pinned ones: on 2 of a large host's cores a worker would compete with the
    step's threads (os.cpu_count counts the host's)."""
    from lmstream.model.presets import cpu_loader_workers, usable_cores

    allowed = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, sorted(allowed)[:1])
        assert usable_cores() == 1  # os.cpu_count() here: the host's, 2 or more
        assert cpu_loader_workers() == 0
    finally:
        os.sched_setaffinity(0, allowed)


def test_orchestrate_notes_a_vocabulary_shortfall_and_a_short_source(tmp_path, capsys):
    data = _corpus(tmp_path, 40)
    code, out, err = _orchestrate(
        tmp_path, capsys, "--stream", "--dataset", str(data), "--experiment", "n",
        "--vocab-size", "50000", "--max-samples", "1000",
    )  # fmt: skip
    assert code == 0, err
    vocab = json.loads(
        (tmp_path / "ws" / "artifacts" / "tokenizer" / "n" / "vocab.json").read_text()
    )
    assert len(vocab) < 50_000
    assert f"note: vocabulary {len(vocab):,}, not the 50,000 asked" in out
    assert "note: the source ran out at 40 documents, before --max-samples 1,000" in out

    # No notes when the corpus gives what was asked (the tiny recipe's 129-token validation
    # rows fit in its holdout; the seed's 2,049-token rows would not: that is a note too).
    code, out, err = _orchestrate(
        tmp_path, capsys, "--stream", "--dataset", str(data), "--experiment", "ok",
        "--vocab-size", "300", "--max-samples", "20", "--model-size", "tiny",
    )  # fmt: skip
    assert code == 0, err
    assert "note:" not in out
