"""Review of #16's speed features: edge cases that broke (MFU peaks of laptop cards, the
dry-run's plan with a z-loss, evaluating an fp8 checkpoint on a CPU) and ones that held
(chunked loss under fp16 autocast with tied weights and uneven chunks)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
import yaml
from tests.support.training import (
    tiny_training_config,
    train_in_process,
    write_kjv_corpus,
    write_run,
)

from lmstream.config import TrainingConfig
from lmstream.train.loss import lm_loss
from lmstream.train.peaks import known_peak_tflops
from lmstream.train.speed_plan import describe_speed


@pytest.mark.parametrize(
    ("name", "bf16"),
    [
        ("NVIDIA GeForce RTX 4090", 165.2),
        ("NVIDIA H100 80GB HBM3", 989.0),
        ("NVIDIA H100 PCIe", 756.0),
        ("NVIDIA H200 NVL", 835.0),
        # Laptop parts share the desktop name but not its chip: their peak is far lower.
        ("NVIDIA GeForce RTX 4090 Laptop GPU", None),
        ("NVIDIA GeForce RTX 5090 Laptop GPU", None),
        ("NVIDIA H20", None),  # not an H200
        ("NVIDIA A10", None),  # not an A100
    ],
)
def test_peaks_of_odd_device_names(name, bf16):
    assert known_peak_tflops(name, "bf16") == bf16


def _plan_line(lines: list[str]) -> str:
    return next(line for line in lines if line.startswith("memory plan per device: "))


def test_the_dry_run_plans_the_chunked_loss_with_a_z_loss_too(tmp_path):
    """The z-loss is computed from the chunks' logsumexp (train/loss.py), so a z-loss no longer
    turns the chunked loss off and the plan keeps counting no full logits."""
    corpus = write_kjv_corpus(tmp_path, 4, 300)
    raw = tiny_training_config(corpus, 2, **{"runtime.chunked_loss": True})
    raw["model"]["vocab_size"] = 50_000
    chunked = TrainingConfig.model_validate(raw)
    plain = TrainingConfig.model_validate(
        {**raw, "runtime": {**raw["runtime"], "chunked_loss": False}}
    )
    with_z = chunked.model_copy(deep=True)
    with_z.optimizer.z_loss = 1e-4
    assert _plan_line(describe_speed(chunked, 50_000)) != _plan_line(describe_speed(plain, 50_000))
    assert _plan_line(describe_speed(with_z, 50_000)) == _plan_line(describe_speed(chunked, 50_000))


def test_chunked_loss_true_with_a_z_loss_trains_as_the_plain_loss(tmp_path):
    """`runtime.chunked_loss: true` with `optimizer.z_loss` was refused at load; now both work
    together: the real CLI logs the same loss and z-loss at every step as the plain loss."""
    corpus = write_kjv_corpus(tmp_path, 40, 300)
    logged = {}
    for chunked in (False, True):
        run = tmp_path / f"chunked-{chunked}"
        cfg = tiny_training_config(
            corpus, 4, **{"runtime.chunked_loss": chunked, "optimizer.z_loss": 1e-3}
        )
        assert train_in_process(write_run(run, cfg)) == 0
        records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        logged[chunked] = [(r["step"], r["loss"], r["z_loss"]) for r in records if "z_loss" in r]
    assert [s for s, _, _ in logged[True]] == [1, 2, 3, 4]
    for (_, loss, z), (_, want_loss, want_z) in zip(logged[True], logged[False], strict=True):
        assert loss == pytest.approx(want_loss, rel=1e-5) and z == pytest.approx(want_z, rel=1e-5)
        assert z > 0


@pytest.mark.parametrize("tied", [True, False])
def test_chunked_loss_under_fp16_autocast_with_uneven_chunks(tied):
    g = torch.Generator().manual_seed(3)
    embed = torch.randn(40, 16, generator=g, requires_grad=True)
    head = embed if tied else torch.randn(40, 16, generator=g, requires_grad=True)
    hidden = torch.randn(23, 16, generator=g, requires_grad=True)
    targets = torch.randint(0, 40, (23,), generator=g)
    targets[:7] = -100  # the first chunk of 7 counts nothing
    with torch.autocast("cpu", dtype=torch.float16):
        plain = F.cross_entropy(F.linear(hidden, head).float(), targets, ignore_index=-100)
    plain.backward()
    want = [t.grad.clone() for t in (hidden, head)]
    hidden.grad = embed.grad = head.grad = None
    with torch.autocast("cpu", dtype=torch.float16):
        loss, _ = lm_loss(hidden, head, targets, 7)
    loss.backward()
    torch.testing.assert_close(loss, plain, rtol=1e-5, atol=0)
    for got, ref in zip((hidden.grad, head.grad), want, strict=True):
        torch.testing.assert_close(got, ref, rtol=2e-3, atol=1e-4)


def test_an_fp8_checkpoint_evaluates_on_a_cpu(tmp_path):
    """fp8 checkpoints hold plain master weights (train/fp8.py) and are meant to load anywhere;
    eval defaults to the checkpoint's precision, which on a CPU used to refuse with a line
    about runtime.precision the user never set here."""
    from lmstream.checkpoint_eval import evaluate_checkpoint

    corpus = write_kjv_corpus(tmp_path, 20, 300)
    run = tmp_path / "run"
    assert train_in_process(write_run(run, tiny_training_config(corpus, 2))) == 0
    ckpt = max((run / "checkpoints").glob("step-*"))
    config = ckpt / "config.yaml"
    text = config.read_text()  # as a GPU run with float8 linears saves it (same size: the
    config.write_text(text.replace("precision: fp32", "precision: fp8 "))  # manifest checks it)
    assert yaml.safe_load(config.read_text())["runtime"]["precision"] == "fp8"
    result = evaluate_checkpoint(ckpt, verify=False, max_batches=1, device="cpu")
    assert result["precision"] == "bf16"
    assert result["val_loss"] == pytest.approx(result["val_loss"])  # finite


def test_the_dry_run_of_the_seed_yaml_plans_memory_before_the_tokenizer_exists(tmp_path, capsys):
    """The seed's training.yaml names a tokenizer that orchestrate has not written yet and no
    model.vocab_size: the plan still comes, for orchestrate's default vocabulary, and says so."""
    from tests.conftest import FIXTURES

    from lmstream.cli import main as cli_main

    config = tmp_path / "training.yaml"
    config.write_text((FIXTURES / "seed_training.yaml").read_text())
    assert cli_main(["train", "--config", str(config), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "MFU = tokens/s per GPU x FLOPs per token / peak" in out, out
    assert "memory plan per device: " in out, out
    assert "assuming a vocabulary of 50,000" in out, out


@pytest.mark.slow
def test_a_micro_batch_chosen_because_the_written_one_does_not_fit_is_not_called_faster(
    tmp_path, capsys
):
    """batch_size 3 (prime) x 1 under a limit that admits only 1 row: the search takes 1 x 3
    however slow it is; the line said "0.51x faster" on this CPU."""
    from tests.integration.test_micro_batch import config

    corpus = write_kjv_corpus(tmp_path, 200, 300)
    cfg = config(corpus, 2, **{"data.batch_size": 3, "data.gradient_accumulation_steps": 1})
    assert train_in_process(write_run(tmp_path / "run", cfg)) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("micro-batch"))
    assert line.startswith("micro-batch 1 x 3 instead of 3 x 1: the written size does not fit")
    assert "faster" not in line, line


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["null", "[4]"])
def test_a_damaged_micro_batch_cache_is_measured_again(tmp_path, capsys, damage):
    """RUN/checkpoints/micro_batch.json that parses but is not the cache's shape (written by
    hand, or by another version) is ignored, as unparsable ones are, not a crash at start-up."""
    from tests.integration.test_micro_batch import config

    from lmstream.train.micro_batch import CACHE_NAME

    corpus = write_kjv_corpus(tmp_path, 200, 300)
    run = tmp_path / "run"
    cache = run / "checkpoints" / CACHE_NAME
    cache.parent.mkdir(parents=True)
    cache.write_text(damage)
    assert train_in_process(write_run(run, config(corpus, 2))) == 0
    assert "micro-batch 1 x 4 instead of 2 x 2" in capsys.readouterr().out
