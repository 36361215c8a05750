"""`lmstream eval --tasks` against lm-evaluation-harness's own `--model hf` (its HFLM class,
through simple_evaluate, as a user runs `lm_eval --model hf`) on the exported folder of the same
checkpoint: the same per-task metrics, on local tasks only (never the network).

The tasks reach the parts where two implementations can drift: multiple choice with few-shot
contexts longer than the model's window (left truncation), and a rolling perplexity task whose
documents span several windows (the prefix token, disjoint windows).

Tolerance: relative 1e-6. Both sides compute the same fp32 arithmetic on the same weights (the
export is checked against our logits), so the scores agree to rounding; an accuracy is k/12 and
a mismatch there is a whole choice flipping, which no tolerance this tight would hide, while a
different prefix token, truncation or window shows in the perplexities at the first digits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.support.harness_task import TASK, write_rolling_task, write_task
from tests.support.training import tiny_training_config, write_kjv_corpus, write_run
from tests.support.training import train_in_process as train

from lmstream.cli import main as cli_main

lm_eval = pytest.importorskip("lm_eval")
pytest.importorskip("transformers")
pytest.importorskip("accelerate")  # the hf model class needs it

pytestmark = pytest.mark.slow


def test_cli_tasks_equal_lm_eval_hf_model_on_the_export(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    write_kjv_corpus(corpus, 120, 300)
    tasks = write_task(tmp_path / "tasks")
    rolling = write_rolling_task(tasks)
    run = tmp_path / "run"
    assert train(write_run(run, tiny_training_config(corpus, 4))) == 0

    names = [TASK, rolling]
    args = ["eval", "--checkpoint", str(run), "--tasks", ",".join(names), "--include-path"]
    assert cli_main([*args, str(tasks), "--num-fewshot", "3", "--device", "cpu"]) == 0
    saved = run / "checkpoints" / "step-00000004" / "eval_results.json"
    ours = json.loads(saved.read_text())["tasks"]

    hf_dir = tmp_path / "hf"
    assert cli_main(["export", "--checkpoint", str(run), "--out", str(hf_dir)]) == 0
    from lm_eval.tasks import TaskManager

    reference = lm_eval.simple_evaluate(
        model="hf",
        model_args={"pretrained": str(hf_dir), "dtype": "float32", "device": "cpu"},
        tasks=names,
        num_fewshot=3,
        task_manager=TaskManager(include_path=str(tasks), include_defaults=False),
        log_samples=False,
    )["results"]

    for name in names:
        theirs = {
            key.split(",")[0]: value
            for key, value in reference[name].items()
            if key.endswith(",none") and isinstance(value, float)
        }
        assert set(theirs) <= set(ours[name]), name
        for metric, value in theirs.items():
            assert ours[name][metric] == pytest.approx(value, rel=1e-6), (name, metric)
    assert set(ours[TASK]) == {"acc", "acc_stderr", "acc_norm", "acc_norm_stderr"}
    assert set(ours[rolling]) == {"word_perplexity", "byte_perplexity", "bits_per_byte"}

    # The export's card lists those scores as the Hub's model-index, and nothing else: the
    # harness's example count (sample_len) is not a benchmark score.
    from huggingface_hub import ModelCard

    listed = {
        (r.dataset_type, r.metric_type)
        for r in ModelCard.load(hf_dir / "README.md").data.eval_results
    }
    assert listed == {(TASK, "acc"), (TASK, "acc_norm")} | {
        (rolling, m) for m in ("word_perplexity", "byte_perplexity", "bits_per_byte")
    }
