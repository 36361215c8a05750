"""Inline data loading (``data.num_workers: 0``), what `lmstream orchestrate --model-size tiny`
writes on a machine of two cores or fewer, CI's runners included: the training loop reads,
tokenizes and packs its documents in its own process, between steps.

* The recipe as orchestrate writes it (its shuffle window, batch shape and holdout) on a
  mixture of uneven, dirty sources (files of 0 to 80 documents, blank lines, one-word
  documents, a binary file, bad JSON records), by epochs: stopped by SIGTERM mid-epoch,
  SIGKILLed while a checkpoint is written near the epoch's end and stopped by SIGINT after the
  roll-over, each time resumed, it ends bit-identical to the run that was never stopped.
* A mixture whose web source stalls mid-run: SIGTERM lands while the loop itself waits on the
  source (inside the mixture's draw, not in a worker), the last finished step is saved with
  the position from before the cut fetch, and the resume ends as the run never stopped.
* A run resumed with another ``data.num_workers`` (0 -> 1, 1 -> 0) would read its documents in
  another order: it is refused in one line naming the setting, and nothing is trained.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import signal
import time
from pathlib import Path

import pytest
import yaml
from tests.reliability.support import (
    assert_same_weights,
    logged_steps,
    start_train,
    subprocess_env,
    tiny_config,
    tree,
    wait_until,
)
from tests.reliability.test_stop_signals import PARTS, RETRIES
from tests.support.http_server import Faults, FileServer
from tests.support.training import logged, short_document_files, train_in_process, write_run

from lmstream.cli import main as cli_main
from lmstream.corpus import kjv_documents
from lmstream.model.presets import cpu_loader_workers
from lmstream.train import checkpoint as ckpt

WEIGHTS = ("0.3", "0.7")  # source 'one' (the primary) ends its pass first: the epoch's end
FILE_SIZES = [0, 1, 1, 2, 3, 5, 40, 80]  # documents per file of source a, drawn
# Records of source one that training skips: blank, empty text, not UTF-8; and one letter.
BAD_RECORDS = [b"", b'{"text": ""}', b'{"text": "\xff\xfe"}', b'{"text": "x"}']


def _uneven_sources(root: Path) -> tuple[str, Path]:
    """Source a: 30 text files of 0 to 80 KJV paragraphs with blank lines and one-word lines,
    and a binary file; source one: a JSON-lines file with empty, non-UTF-8 and one-letter
    records among 140 paragraphs. Returns (a's glob, one's file)."""
    docs = list(itertools.islice(kjv_documents(), 640))
    rng = random.Random(3)
    folder = root / "a"
    folder.mkdir(parents=True)
    taken = iter(docs[:500])
    for k in range(30):
        lines = []
        for doc in itertools.islice(taken, rng.choice(FILE_SIZES)):
            lines.append(doc)
            if rng.random() < 0.3:
                lines.append("")  # a blank line
            if rng.random() < 0.2:
                lines.append(rng.choice(["a", "so", "Amen."]))  # a document of a token or two
        (folder / f"part-{k:02d}.txt").write_text("".join(line + "\n" for line in lines))
    (folder / "part-99.txt").write_bytes(bytes(range(256)) * 20)  # not text
    records = []
    for doc in docs[500:]:
        records.append(json.dumps({"text": doc}).encode())
        if rng.random() < 0.4:
            records.append(rng.choice(BAD_RECORDS))
    one = root / "one.jsonl"
    one.write_bytes(b"\n".join(records) + b"\n")
    return str(folder / "*.txt"), one


def _orchestrated_run(tmp_path: Path, capsys) -> Path:
    """orchestrate's tiny recipe on the two sources, by epochs, with a smaller model and
    frequent checkpoints; returns training.yaml. data.num_workers is set to 0 as a 2-core
    machine writes it (checked), so the test reads inline on any machine."""
    a, one = _uneven_sources(tmp_path / "data")
    ws = tmp_path / "ws"
    argv = ["orchestrate", "--stream", "--dataset", a, "--dataset", str(one), "--weights",
            *WEIGHTS, "--model-size", "tiny", "--vocab-size", "500", "--experiment", "mix",
            "--workspace", str(ws), "--no-progress"]  # fmt: skip
    assert cli_main(argv) == 0, capsys.readouterr().err
    capsys.readouterr()
    config = ws / "runs" / "mix" / "training.yaml"
    cfg = yaml.safe_load(config.read_text())
    assert cfg["data"]["num_workers"] == cpu_loader_workers()
    cfg["data"]["num_workers"] = 0
    cfg["model"].update(hidden_size=64, intermediate_size=128, num_layers=2, residual_dropout=0.1)
    cfg["scheduler"].update(total_steps=None, total_epochs=2, strategy="constant_with_warmup",
                            warmup_steps=3)  # fmt: skip
    cfg["runtime"]["checkpoint"].update(every_n_steps=3, max_keep=3)
    cfg["runtime"]["evaluation"].update(every_n_steps=20, max_batches=2)
    cfg["runtime"]["log_every_n_steps"] = 1
    config.write_text(yaml.safe_dump(cfg))
    return config


def _copy_run(config: Path, name: str) -> Path:
    """A fresh run folder beside ``config``'s (its relative tokenizer paths still resolve)."""
    run_dir = config.parent.with_name(name)
    run_dir.mkdir()
    for file in ("training.yaml", "streaming_config.json", "special_tokens.txt"):
        (run_dir / file).write_bytes((config.parent / file).read_bytes())
    return run_dir / "training.yaml"


def _epochs(run_dir: Path) -> dict[int, tuple[int, int, int]]:
    return {s: (e, logged(run_dir, "epoch/a")[s], logged(run_dir, "epoch/one")[s])
            for s, e in logged(run_dir, "epoch").items()}  # fmt: skip


def _stop(config: Path, run_dir: Path, sig: signal.Signals, step: int, writing: bool) -> None:
    """Resume the run (start it the first time), send ``sig`` once it has logged ``step``
    (and, with ``writing``, while a checkpoint folder is still being written)."""
    first = not (run_dir / "metrics.jsonl").exists()
    proc = start_train(config, *(() if first else ("--resume",)))
    checkpoints = run_dir / "checkpoints"

    def due() -> bool:
        past = max(logged_steps(run_dir), default=0) >= step
        return past and (not writing or any(n.startswith(".tmp-") for n in os.listdir(checkpoints)))

    try:
        assert wait_until(proc, due), proc.communicate()[1][-2000:]
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == (-sig if sig == signal.SIGKILL else 0), err[-2000:]


@pytest.mark.slow
def test_orchestrated_tiny_mixture_read_inline_resumes_bit_exact_across_the_roll_over(
    tmp_path, capsys
):
    config = _orchestrated_run(tmp_path, capsys)
    reference = config.parent
    assert train_in_process(config) == 0
    epochs = _epochs(reference)
    end = max(s for s, (e, _, _) in epochs.items() if e == 0)  # epoch 0's last step
    assert epochs[max(epochs)][0] == 1 and end >= 30, epochs  # two epochs, the first long
    assert epochs[end][2] == 0 and epochs[end + 1][2] == 1  # the primary rolled over there
    run_config = _copy_run(config, "faulted")
    run_dir = run_config.parent
    _stop(run_config, run_dir, signal.SIGTERM, 8, writing=False)
    _stop(run_config, run_dir, signal.SIGKILL, end - 4, writing=True)  # a write near the end
    _stop(run_config, run_dir, signal.SIGINT, end + 2, writing=False)
    assert min(logged_steps(run_dir)) == 1 and max(logged_steps(run_dir)) < max(epochs)
    assert train_in_process(run_config, "--resume") == 0
    assert logged(run_dir, "loss") == logged(reference, "loss")
    assert _epochs(run_dir) == epochs
    assert_same_weights(run_dir, reference, max(epochs))
    # The dirty records were met inline and skipped (counts kept in the data state).
    trainer = ckpt.load_trainer_state(ckpt.resolve_checkpoint(run_dir / "checkpoints"))
    data = trainer["data"][0]
    assert data["num_workers"] == 0
    assert sum(n for counts in data["skipped"].values() for n in counts.values()) > 0, data


def _web_mixture_run(run_dir: Path, corpus: Path, server: FileServer) -> Path:
    """Read inline: the corpus file mixed half and half with PARTS small web files of short
    documents, read 4 records at a time (so the run keeps opening web files as it trains)."""
    cfg = tiny_config(corpus, **{"scheduler.total_steps": 300, "data.train_shards": []})
    cfg["data"].update(num_workers=0, batch_size=16, shuffle_buffer_size=8)
    cfg["runtime"]["checkpoint"]["every_n_steps"] = 1000  # only the stop's checkpoint
    config = write_run(run_dir, cfg)
    urls = [server.url(f"part-{k:03d}.jsonl") for k in range(PARTS)]
    sources = [
        {"name": "local", "weight": 0.5, "dataset": str(corpus / "train.jsonl")},
        {"name": "web", "weight": 0.5, "dataset": urls[0], "data_files": urls},
    ]
    streaming = {"version": 2, "sources": sources, "stream_batch_size": 4}
    (run_dir / "streaming_config.json").write_text(json.dumps(streaming))
    return config


@pytest.mark.slow
def test_sigterm_while_a_mixture_source_stalls_inline_resumes_exactly(
    corpus, tmp_path, monkeypatch
):
    for name, value in RETRIES.items():
        monkeypatch.setenv(name, value)
    parts = short_document_files(corpus, PARTS)
    with FileServer(parts) as server:
        clean = tmp_path / "clean"
        assert train_in_process(_web_mixture_run(clean, corpus, server)) == 0
    with FileServer(parts) as server:
        run_dir = tmp_path / "run"
        config = _web_mixture_run(run_dir, corpus, server)
        proc = start_train(config, env=subprocess_env(**RETRIES))
        try:
            assert wait_until(proc, lambda: max(logged_steps(run_dir), default=0) >= 3)
            server.faults = Faults(kinds=("stall",), rate=1.0, stall_seconds=60)
            assert wait_until(proc, lambda: len(server.faults.injected) >= 2, timeout=60)
            time.sleep(1.5)  # in the backoff between two attempts, or in a stalled read
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=60)
        finally:
            proc.kill()
        assert proc.returncode == 0, err[-2000:]
        step = max(logged_steps(run_dir))
        assert f"while waiting for data, at step {step}; checkpoint saved" in out + err, err
        assert ckpt.read_manifest(ckpt.resolve_checkpoint(run_dir / "checkpoints"))["step"] == step
        server.faults = Faults()  # the source is back
        assert train_in_process(config, "--resume") == 0
    assert logged(run_dir, "loss") == logged(clean, "loss")
    assert_same_weights(run_dir, clean, 300)


@pytest.mark.parametrize(("before", "after"), [(0, 1), (1, 0)])
def test_resume_with_another_num_workers_is_refused_in_one_line(
    corpus, tmp_path, capsys, before, after
):
    """The stream is split by data worker, so the position of a run read inline means other
    documents with a worker (and back): the resume stops before training anything."""
    run_dir = tmp_path / "run"
    overrides = {"scheduler.total_steps": 4, "data.num_workers": before}
    config = write_run(run_dir, tiny_config(corpus, **overrides))
    assert train_in_process(config) == 0
    files = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()}
    names = tree(run_dir)
    write_run(run_dir, tiny_config(corpus, **{**overrides, "scheduler.total_steps": 6,
                                              "data.num_workers": after}))  # fmt: skip
    capsys.readouterr()
    assert train_in_process(config, "--resume") == 4
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert f"data.num_workers: {before} -> {after}" in err[0] and "cannot resume" in err[0]
    assert tree(run_dir) == names
    changed = [p for p, t in files.items() if p.stat().st_mtime_ns != t and p != config]
    assert not changed, changed  # nothing trained, logged or saved
    assert max(logged_steps(run_dir)) == 4
