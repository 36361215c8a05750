"""lm-evaluation-harness benchmarks on a local multiple-choice task (a task YAML and a jsonl made
here, loaded through --include-path: never the network): `lmstream eval --tasks` equals the
same scoring done by hand with transformers on the exported folder; in-loop tasks are logged
and leave training's RNG (so the losses) untouched; a missing lm-eval is one line."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from tests.support.harness_task import TASK, task_documents, write_task
from tests.support.training import tiny_training_config, write_kjv_corpus, write_run
from tests.support.training import train_in_process as train  # the real CLI, one thread

from lmstream.cli import main as cli_main

pytest.importorskip("lm_eval")
transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_kjv_corpus(tmp_path_factory.mktemp("corpus"), 120, 300)


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory) -> Path:
    return write_task(tmp_path_factory.mktemp("tasks"))


def by_hand(hf_dir: Path) -> dict[str, float]:
    """acc and acc_norm of the task computed with transformers alone: the continuation
    " choice" scored after the question, as the harness defines a multiple-choice request."""
    model = transformers.AutoModelForCausalLM.from_pretrained(str(hf_dir)).float().eval()
    tok = transformers.AutoTokenizer.from_pretrained(str(hf_dir))
    hits = norm_hits = 0
    rows = task_documents()
    for row in rows:
        context = tok(row["question"])["input_ids"]
        scores = []
        for choice in row["choices"]:
            whole = tok(row["question"] + " " + choice)["input_ids"]
            cont = whole[len(context) :]
            with torch.no_grad():
                logits = model(torch.tensor([whole[:-1]])).logits[0].float()
            logprobs = torch.log_softmax(logits, -1)[-len(cont) :]
            scores.append(logprobs.gather(-1, torch.tensor(cont)[:, None]).sum().item())
        hits += max(range(3), key=lambda i: scores[i]) == row["answer"]
        normed = [s / len(c) for s, c in zip(scores, row["choices"], strict=True)]
        norm_hits += max(range(3), key=lambda i: normed[i]) == row["answer"]
    return {"acc": hits / len(rows), "acc_norm": norm_hits / len(rows)}


def test_cli_tasks_equal_the_same_scoring_by_hand_on_the_export(
    corpus: Path, task_dir: Path, tmp_path: Path, capsys
) -> None:
    run = tmp_path / "run"
    assert train(write_run(run, tiny_training_config(corpus, 4))) == 0
    checkpoint = run / "checkpoints" / "step-00000004"
    args = ["eval", "--checkpoint", str(run), "--tasks", TASK, "--include-path", str(task_dir)]
    assert cli_main([*args, "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    saved = json.loads((checkpoint / "eval_results.json").read_text())
    ours = saved["tasks"][TASK]
    table = [line.split() for line in printed.splitlines()]
    assert [TASK, "acc", f"{ours['acc']:.4f}", "±", f"{ours['acc_stderr']:.4f}"] in table

    assert cli_main(["export", "--checkpoint", str(run), "--out", str(tmp_path / "hf")]) == 0
    expected = by_hand(tmp_path / "hf")
    assert ours["acc"] == pytest.approx(expected["acc"], abs=1e-9)
    assert ours["acc_norm"] == pytest.approx(expected["acc_norm"], abs=1e-9)
    # the card of that export reports the benchmark found beside the checkpoint
    assert f"| {TASK} | acc | {ours['acc']:.4f}" in (tmp_path / "hf" / "README.md").read_text()


def test_an_unknown_task_is_one_line_before_loading_the_model(tmp_path: Path, capsys) -> None:
    missing = tmp_path / "no-checkpoint-here"  # the task is checked first
    args = ["eval", "--checkpoint", str(missing), "--tasks", "no_such_task_xyz", "--device", "cpu"]
    assert cli_main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown lm-eval task(s) no_such_task_xyz" in err[0]


def test_in_loop_tasks_are_logged_and_leave_the_run_unchanged(
    corpus: Path, task_dir: Path, tmp_path: Path
) -> None:
    # dropout draws from the RNG the harness re-seeds: the losses show whether it was restored
    base = {
        "model.residual_dropout": 0.1,
        "runtime.evaluation.every_n_steps": 2,
        "runtime.checkpoint.every_n_steps": 2,
    }
    tasks = {
        "runtime.evaluation.tasks": [TASK],
        "runtime.evaluation.tasks_limit": 6,
        "runtime.evaluation.tasks_include_path": str(task_dir),
        "runtime.logging.tensorboard": "tb",
    }
    plain, with_tasks = tmp_path / "plain", tmp_path / "tasks"
    assert train(write_run(plain, tiny_training_config(corpus, 4, **base))) == 0
    assert train(write_run(with_tasks, tiny_training_config(corpus, 4, **base, **tasks))) == 0

    def records(run: Path) -> list[dict]:
        return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]

    logged = {r["step"]: r for r in records(with_tasks) if f"eval/{TASK}/acc" in r}
    assert sorted(logged) == [2, 4]
    assert all(0.0 <= r[f"eval/{TASK}/acc"] <= 1.0 for r in logged.values())
    losses = [(r["step"], r.get("loss"), r.get("val_loss")) for r in records(plain)]
    assert [(r["step"], r.get("loss"), r.get("val_loss")) for r in records(with_tasks)] == losses

    # Rolled back to step 2 (after that step's tasks ran): the same losses and scores again.
    def exact(run: Path) -> list[tuple]:
        keys = ("step", "loss", "val_loss", f"eval/{TASK}/acc", f"eval/{TASK}/acc_norm")
        return [tuple(r.get(k) for k in keys) for r in records(run)]

    first = exact(with_tasks)
    step2 = str(with_tasks / "checkpoints" / "step-00000002")
    assert train(write_run(with_tasks, tiny_training_config(corpus, 4, **base, **tasks)),
                 "--resume", step2, "--rollback") == 0  # fmt: skip
    assert exact(with_tasks) == first

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(with_tasks / "tb"))
    events.Reload()
    assert f"eval/{TASK}/acc" in events.Tags()["scalars"]


def test_a_missing_harness_is_one_line(corpus: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "lm_eval", None)
    cfg = tiny_training_config(corpus, 2, **{"runtime.evaluation.tasks": ["arc_easy"]})
    assert train(write_run(tmp_path / "run", cfg)) == 2
    assert capsys.readouterr().err.strip() == (
        "lmstream train: error: runtime.evaluation.tasks: the lm-eval package is not "
        "installed; pip install 'lmstream[eval]'"
    )
    args = ["eval", "--checkpoint", str(tmp_path), "--tasks", "arc_easy"]
    assert cli_main(args) == 2
    assert capsys.readouterr().err.strip() == (
        "lmstream eval: error: --tasks: the lm-eval package is not installed; "
        "pip install 'lmstream[eval]'"
    )


def test_in_loop_tasks_run_without_a_validation_set(
    corpus: Path, task_dir: Path, tmp_path: Path
) -> None:
    cfg = tiny_training_config(
        corpus,
        2,
        **{
            "data.validation_documents": 0,
            "runtime.evaluation.tasks": [TASK],
            "runtime.evaluation.tasks_limit": 3,
            "runtime.evaluation.tasks_include_path": str(task_dir),
        },
    )
    assert train(write_run(tmp_path / "run", cfg)) == 0
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    final = [json.loads(line) for line in lines if f"eval/{TASK}/acc" in line]
    assert [r["step"] for r in final] == [2] and "val_loss" not in final[0]


def test_in_loop_task_typo_or_missing_folder_fails_before_training(
    corpus: Path, task_dir: Path, tmp_path: Path, capsys
) -> None:
    """A typo in runtime.evaluation.tasks (or a tasks_include_path that is not there) is one
    line naming the field at start, not a crash at the first evaluation hours later."""
    typo = {
        "runtime.evaluation.tasks": [TASK + "_typo"],
        "runtime.evaluation.tasks_include_path": str(task_dir),
    }
    assert train(write_run(tmp_path / "typo", tiny_training_config(corpus, 2, **typo))) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(
        f"lmstream train: error: runtime.evaluation.tasks: unknown lm-eval task(s) {TASK}_typo"
    )
    assert not (tmp_path / "typo" / "checkpoints").exists()

    gone = {
        "runtime.evaluation.tasks": [TASK],
        "runtime.evaluation.tasks_include_path": str(tmp_path / "no-such-folder"),
    }
    assert train(write_run(tmp_path / "gone", tiny_training_config(corpus, 2, **gone))) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "lmstream train: error: runtime.evaluation.tasks_include_path: "
        f"{tmp_path / 'no-such-folder'} is not a folder"
    ]
    assert not (tmp_path / "gone" / "checkpoints").exists()

    args = ["eval", "--checkpoint", str(tmp_path), "--tasks", TASK, "--include-path"]
    assert cli_main([*args, str(tmp_path / "no-such-folder")]) == 2
    assert capsys.readouterr().err.strip() == (
        f"lmstream eval: error: --include-path: {tmp_path / 'no-such-folder'} is not a folder"
    )


def test_generation_keeps_room_for_the_answer_when_the_prompt_fills_the_window(
    corpus: Path,
) -> None:
    """As the harness's HF class: a generate_until prompt longer than the context is cut to
    ``max_length - max_gen_toks`` tokens so the answer has room, and generation stops at
    <|endoftext|>. Before, the prompt kept ``max_length - 1`` tokens (one token of answer) and
    an answer whose ``until`` left <|endoftext|> out ran on past it."""
    from lm_eval.api.instance import Instance

    from lmstream.config import ModelConfig
    from lmstream.generate import generate_tokens
    from lmstream.harness import _lm_class
    from lmstream.model.transformer import Transformer
    from lmstream.tokenizer import load_tokenizer

    tok = load_tokenizer(corpus / "tok" / "tokenizer.json")
    torch.manual_seed(0)
    window = 64
    model = Transformer(
        ModelConfig(hidden_size=64, intermediate_size=128, num_layers=2,
                    num_attention_heads=4, max_position_embeddings=window),
        tok.get_vocab_size(),
    ).eval()  # fmt: skip
    lm = _lm_class()(model, tok)
    context = " ".join(row["question"] for row in task_documents())  # well over 64 tokens
    ids = lm.tok_encode(context)
    assert len(ids) > 2 * window
    request = Instance(
        request_type="generate_until", doc={}, idx=0,
        arguments=(context, {"until": ["@@never@@"], "max_gen_toks": 8}),
    )  # fmt: skip
    [answer] = lm.generate_until([request])

    eot = tok.token_to_id("<|endoftext|>")
    by_hand = list(generate_tokens(model, ids[-(window - 8) :], 8, temperature=0, stop_ids=[eot]))
    by_hand = by_hand[:-1] if by_hand[-1] == eot else by_hand
    assert len(by_hand) > 1
    assert answer == lm.tok_decode(by_hand)

    with torch.no_grad():  # a model whose every greedy token is <|endoftext|> (id 0, ties go low)
        model.embed.weight.zero_()
    assert eot == 0 and list(generate_tokens(model, ids[:4], 3, temperature=0)) == [eot] * 3
    blank_line = Instance(
        request_type="generate_until", doc={}, idx=0,
        arguments=(context, {"until": ["\n\n"], "max_gen_toks": 8}),
    )  # fmt: skip
    assert lm.generate_until([blank_line]) == [""]  # not "<|endoftext|>" eight times


def test_an_empty_continuation_scores_zero_as_in_the_hf_class(corpus: Path) -> None:
    """A multiple-choice option that encodes to no tokens (an empty choice) has log-prob 0 and
    counts as greedy, as in the harness's HF class; it crashed (ids[-0:] is the whole list)."""
    from lm_eval.api.instance import Instance

    from lmstream.config import ModelConfig
    from lmstream.harness import _lm_class
    from lmstream.model.transformer import Transformer
    from lmstream.tokenizer import load_tokenizer

    tok = load_tokenizer(corpus / "tok" / "tokenizer.json")
    torch.manual_seed(0)
    model = Transformer(
        ModelConfig(hidden_size=64, intermediate_size=128, num_layers=2,
                    num_attention_heads=4, max_position_embeddings=64),
        tok.get_vocab_size(),
    ).eval()  # fmt: skip
    lm = _lm_class()(model, tok)
    requests = [
        Instance(request_type="loglikelihood", doc={}, idx=i, arguments=("In the beginning", c))
        for i, c in enumerate(["", " God"])
    ]
    empty, word = lm.loglikelihood(requests)
    assert empty == (0.0, True)
    assert word[0] < 0.0
