"""`lmstream train` with model.document_masking through the real CLI: it trains (2 loader
workers), resumes bit-identically, `lmstream eval` reproduces the logged validation loss (the
same mask as training), generate runs with the KV cache, export still matches transformers.
Two ranks under torchrun: tests/distributed/test_document_masking.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tests.distributed.support import metrics
from tests.support.models import tiny_model
from tests.support.training import (
    tiny_training_config,
    train_in_process,
    write_kjv_corpus,
    write_run,
)

from lmstream.cli import main
from lmstream.data.loader import build_validation_batches
from lmstream.export import TOLERANCE, _sample_batch, export_model
from lmstream.tokenizer import load_tokenizer
from lmstream.train import checkpoint as ck
from lmstream.train.checkpoint import load_checkpoint_model

pytestmark = pytest.mark.slow
TOTAL = 16
MASKED = {
    "model.document_masking": True,
    "data.num_workers": 2,
    "scheduler.strategy": "constant_with_warmup",  # a short run is the long one's first steps
    "runtime.checkpoint": {"every_n_steps": 8, "async_save": False},
    "runtime.evaluation": {"every_n_steps": 8, "max_batches": 2},
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_kjv_corpus(tmp_path_factory.mktemp("corpus"), 200, 400)


@pytest.fixture(scope="module")
def masked_run(corpus, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("masked")
    assert train_in_process(write_run(run_dir, tiny_training_config(corpus, TOTAL, **MASKED))) == 0
    return run_dir


def _end(run_dir: Path) -> Path:
    return run_dir / "checkpoints" / f"step-{TOTAL:08d}"


def test_masked_run_trains_and_saves_the_separator(masked_run, corpus) -> None:
    losses = metrics(masked_run)
    assert sorted(losses) == list(range(1, TOTAL + 1)) and losses[TOTAL] < losses[1]
    model, cfg, _ = load_checkpoint_model(_end(masked_run), "cpu")
    eot = load_tokenizer(corpus / "tok" / "tokenizer.json").token_to_id("<|endoftext|>")
    assert cfg.model.document_masking and cfg.model.document_separator_id == eot
    # Some validation rows hold the end of one document and the start of the next: there the
    # mask changes the logits.
    batch = build_validation_batches(cfg, load_tokenizer(cfg.tokenizer.tokenizer_json), masked_run)
    inputs = batch[0].inputs
    assert int((inputs == eot).sum()) >= 1
    with torch.no_grad():
        masked = model(inputs)[0]
        model.config = model.config.model_copy(update={"document_masking": False})
        plain = model(inputs)[0]
    assert (masked - plain).abs().max() > 1e-3


def test_masked_run_resumes_bit_identically(masked_run, corpus, tmp_path) -> None:
    short = tiny_training_config(corpus, TOTAL, **MASKED, **{"scheduler.total_steps": TOTAL // 2})
    assert train_in_process(write_run(tmp_path, short)) == 0
    full = tiny_training_config(corpus, TOTAL, **MASKED)
    assert train_in_process(write_run(tmp_path, full), "--resume") == 0
    assert metrics(tmp_path) == metrics(masked_run)  # every step's loss, bit for bit
    a, _ = ck.load_model_state(_end(tmp_path))
    b, _ = ck.load_model_state(_end(masked_run))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_eval_generate_and_export_of_a_masked_model(masked_run, tmp_path, capsys) -> None:
    assert main(["eval", "--checkpoint", str(_end(masked_run)), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["val_loss"] == pytest.approx(metrics(masked_run, "val_loss")[TOTAL], rel=1e-5)
    prompt = "And God said"
    assert main(["generate", "--checkpoint", str(_end(masked_run)), "--prompt", prompt,
                 "--max-new-tokens", "8", "--temperature", "0"]) == 0  # fmt: skip
    assert prompt in capsys.readouterr().out
    out = tmp_path / "hf"
    assert main(["export", "--checkpoint", str(_end(masked_run)), "--out", str(out)]) == 0
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(out)).float().eval()
    model, cfg, _ = load_checkpoint_model(_end(masked_run), "cpu")
    ids = torch.randint(
        0, cfg.model.vocab_size, (2, 30), generator=torch.Generator().manual_seed(1)
    )
    ids[ids == cfg.model.document_separator_id] += 1  # one document: what transformers computes
    with torch.no_grad():
        assert (model(ids)[0] - hf(ids).logits).abs().max().item() <= TOLERANCE


def test_export_check_feeds_one_document_per_row(tmp_path) -> None:
    # A separator inside export's sample rows split them into documents for our model but not
    # for transformers' (no mask): the check must compare single documents.
    separator = int(_sample_batch(tiny_model(97), None)[1, 3])
    model = tiny_model(97, document_masking=True, document_separator_id=separator).eval()
    assert export_model(model, None, tmp_path / "hf").max_abs_diff <= TOLERANCE
