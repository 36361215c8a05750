"""Epoch-based runs on 2 ranks: each rank's part of the stream has its own length, yet the ranks
must agree on the schedule's length, on when an epoch ends and when the run stops (a rank that
stopped alone would leave its peer waiting in a collective)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from tests.distributed.support import JOB_TIMEOUT_S, job_env, metrics, run_job, tiny_config
from tests.support.doc_trace import docs, write_uneven
from tests.support.training import pass_tokens, write_run

from lmstream.tokenizer import save_tokenizer, train_bpe
from lmstream.train import checkpoint as ckpt

pytestmark = [pytest.mark.distributed, pytest.mark.slow]


def test_total_epochs_on_two_ranks(corpus, tmp_path):
    lines = (corpus / "train.jsonl").read_text().splitlines(keepends=True)
    (tmp_path / "small.jsonl").write_text("".join(lines[:50]))
    cfg = tiny_config(
        corpus,
        **{
            "data.train_shards": [str(tmp_path / "small.jsonl")],
            "data.validation_documents": 10,
            "scheduler.total_steps": None,
            "scheduler.total_epochs": 2,
            "scheduler.warmup_steps": 1,
        },
    )
    cfg["runtime"]["checkpoint"] = {"every_n_steps": None, "every_n_epochs": 1}
    cfg["runtime"]["evaluation"] = {"every_n_steps": None, "every_n_epochs": 1, "max_batches": 2}
    config = write_run(tmp_path / "run", cfg)
    done = run_job("train", "--config", str(config))
    assert done.returncode == 0, done.stdout
    run_dir = tmp_path / "run"
    final = ckpt.resolve_checkpoint(run_dir / "checkpoints")
    trainer = ckpt.load_trainer_state(final)
    per_epoch = trainer["state"]["steps_per_epoch"]
    assert per_epoch >= 2
    last = trainer["state"]["step"]
    assert last == max(metrics(run_dir))
    # An epoch is one pass over the whole source: it lasts as long as the longer rank's part
    # (the other steps on idle batches meanwhile), the same number of steps every epoch.
    assert last == 2 * per_epoch
    # One evaluation and one checkpoint at the end of epoch 0 (the same step on both ranks, or
    # the job would hang) and the final ones.
    evals = sorted(metrics(run_dir, "val_loss"))
    assert evals == [per_epoch, last]
    steps = [json.loads((p / ckpt.MANIFEST_FILE).read_text())["step"]
             for p in ckpt.list_checkpoints(run_dir / "checkpoints")]  # fmt: skip
    assert steps == evals
    # Padding and a drained rank's idle micro-batches are not tokens seen: both passes' real
    # tokens over both ranks (before, every step counted as full).
    per_pass = sum(pass_tokens(config, rank, 2)[1] for rank in (0, 1))
    assert trainer["state"]["tokens_seen"] == 2 * per_pass


@pytest.mark.parametrize(
    ("kind", "sizes"), [("parquet", [2, 300]), ("jsonl.gz", [130, 90, 110, 70])]
)
def test_each_epoch_is_the_whole_pass_on_two_ranks(tmp_path, kind, sizes):
    """Issue #20 under torchrun: files of 2 and 300 documents (or 130/90/110/70), 2 ranks x 2
    workers, 2 epochs: every epoch trains every document once, across both ranks. Before, each
    rank streamed its own file and the small one was repeated about 150 times per epoch."""
    paths, texts = write_uneven(tmp_path / "data", sizes, kind)
    save_tokenizer(train_bpe(docs(300), 400, ["<|endoftext|>", "<|pad|>"]), tmp_path / "tok")
    cfg = tiny_config(
        tmp_path,
        **{"data.train_shards": paths, "data.num_workers": 2, "data.validation_documents": 5},
    )
    config = write_run(tmp_path / "run", cfg)
    job = Path(__file__).with_name("trace_job.py")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(job), str(config), "2", str(tmp_path)]  # fmt: skip
    done = subprocess.run(cmd, env=job_env(), capture_output=True, text=True, timeout=JOB_TIMEOUT_S)
    assert done.returncode == 0, done.stdout + done.stderr
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["steps"] == ranks[1]["steps"], "the ranks must take the same steps"
    for epoch in ("0", "1"):
        trained = Counter(ranks[0]["trained"][epoch]) + Counter(ranks[1]["trained"][epoch])
        assert trained == Counter(range(5, len(texts))), f"epoch {epoch}"
