"""The #17 integrations where the first tests did not look (review): `lmstream eval --tasks`
on a checkpoint that cannot be written beside."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.support.harness_task import TASK, write_task
from tests.support.read_only import read_only
from tests.support.training import tiny_training_config, write_kjv_corpus, write_run
from tests.support.training import train_in_process as train

from lmstream.cli import main as cli_main

pytest.importorskip("lm_eval")

pytestmark = pytest.mark.slow


def test_tasks_on_a_read_only_checkpoint_print_the_results_then_one_line(
    tmp_path: Path, capsys
) -> None:
    """A shared or mounted checkpoint: the benchmark ran to the end, then a traceback
    (OSError: Read-only file system) on eval_results.json lost its results."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    write_kjv_corpus(corpus, 60, 300)
    tasks = write_task(tmp_path / "tasks")
    run = tmp_path / "run"
    assert train(write_run(run, tiny_training_config(corpus, 2))) == 0
    checkpoint = run / "checkpoints" / "step-00000002"
    capsys.readouterr()
    args = ["eval", "--checkpoint", str(checkpoint), "--tasks", TASK, "--include-path"]
    with read_only(checkpoint):
        code = cli_main([*args, str(tasks), "--device", "cpu", "--json"])
    out, err = capsys.readouterr()
    assert code == 1
    printed = json.loads(out.strip().splitlines()[-1])
    assert 0.0 <= printed["tasks"][TASK]["acc"] <= 1.0
    errors = [line for line in err.splitlines() if line.startswith("lmstream eval: error: ")]
    assert errors == err.strip().splitlines()[-1:]  # one line, the last (after the progress)
    assert str(checkpoint / "eval_results.json") in errors[0]
    assert not (checkpoint / "eval_results.json").exists()


def test_the_card_of_a_mixture_lists_each_source_and_its_weight(tmp_path: Path) -> None:
    """streaming_config.json version 2 (a mixture, the schema's other form): export's model
    card read its top-level ``dataset``, which a mixture does not have, and crashed
    (TypeError); the issue asks for the sources and their weights."""
    huggingface_hub = pytest.importorskip("huggingface_hub")
    pytest.importorskip("transformers")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    write_kjv_corpus(corpus, 60, 300)
    run = tmp_path / "run"
    assert train(write_run(run, tiny_training_config(corpus, 2))) == 0
    mixture = {
        "version": 2,
        "sources": [
            {"dataset": "HuggingFaceFW/fineweb-edu", "name": "web", "weight": 3},
            {"dataset": str(corpus / "train.jsonl"), "name": "kjv", "weight": 1},
        ],
    }
    (run / "streaming_config.json").write_text(json.dumps(mixture))
    out = tmp_path / "hf"
    assert cli_main(["export", "--checkpoint", str(run), "--out", str(out)]) == 0
    card = huggingface_hub.ModelCard.load(out / "README.md")
    assert card.data.datasets == ["HuggingFaceFW/fineweb-edu"]
    assert "- web: HuggingFaceFW/fineweb-edu, split train (weight 0.75)" in card.text
    assert "- kjv: train.jsonl, split train (weight 0.25)" in card.text
    assert str(corpus) not in card.text  # a local path is shown by its name only
