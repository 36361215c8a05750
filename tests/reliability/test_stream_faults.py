"""Training from a failing http(s) source: a loopback server (tests/support/http_server.py, with
Range support) serving the corpus as 8 JSON-lines files, in streaming mode
(streaming_config.json beside training.yaml).

* Faults at ~20% of requests (dropped connections, 500/503/429, stalls past the read timeout,
  truncated bodies): the run finishes and its loss at every step and its final weights are
  bit-identical to a fault-free run's, so the documents consumed were exactly the same.
* A source that stays down beyond the retry budget: the run stops with one clear line (exit 3),
  its checkpoints complete; `--resume` once the source is back finishes as the fault-free run.

Retries and timeouts are shortened through the documented environment settings of
lmstream.data.sources (LMSTREAM_SOURCE_*), not by patching code.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.reliability.support import (
    assert_checkpoints_complete,
    assert_same_weights,
    tiny_config,
)
from tests.support.http_server import FAULT_KINDS, Faults, FileServer
from tests.support.training import apply_overrides, train_in_process, write_run

from lmstream.data import sources
from lmstream.train import checkpoint as ckpt

pytestmark = pytest.mark.slow
STEPS = 24
FILES = 2


@pytest.fixture
def fast_network(monkeypatch):
    monkeypatch.setenv(sources.READ_TIMEOUT_ENV, "1")
    monkeypatch.setenv(sources.RETRY_DELAY_ENV, "0.02")
    monkeypatch.setenv(sources.MAX_RETRY_DELAY_ENV, "0.1")
    monkeypatch.setenv(sources.MAX_RETRIES_ENV, "6")


@pytest.fixture(scope="module")
def served(corpus) -> dict[str, bytes]:
    """The corpus as FILES JSON-lines files (one GET per file and pass)."""
    lines = (corpus / "train.jsonl").read_bytes().splitlines(keepends=True)
    return {f"part-{k}.jsonl": b"".join(lines[k::FILES]) for k in range(FILES)}


def streaming_run(
    run_dir: Path, corpus: Path, server: FileServer, stream_batch_size: int = 1000, **overrides
) -> Path:
    names = [f"part-{k}.jsonl" for k in range(FILES)]
    cfg = tiny_config(
        corpus,
        **{"scheduler.total_steps": STEPS, "data.train_shards": []},
    )
    config = write_run(run_dir, apply_overrides(cfg, overrides))
    urls = [server.url(n) for n in names]
    (run_dir / "streaming_config.json").write_text(
        json.dumps(
            {
                "dataset": urls[0],
                "data_files": urls,
                "split": "train",
                "stream_batch_size": stream_batch_size,
            }
        )
    )
    return config


@pytest.fixture(scope="module")
def clean_run(corpus, served, tmp_path_factory) -> tuple[Path, int]:
    """The fault-free streaming run, and how many GET requests it made."""
    run_dir = tmp_path_factory.mktemp("stream-clean")
    with FileServer(served) as server:
        assert train_in_process(streaming_run(run_dir, corpus, server)) == 0
        gets = sum(method == "GET" for method, *_ in server.requests)
    return run_dir, gets


def losses(run_dir: Path) -> dict[int, float]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r["loss"] for r in map(json.loads, lines) if "loss" in r}


@pytest.mark.parametrize(
    "kinds",
    [(kind,) for kind in FAULT_KINDS] + [FAULT_KINDS],
    ids=[*FAULT_KINDS, "mixed"],
)
def test_faults_change_nothing(corpus, served, clean_run, tmp_path, fast_network, kinds):
    """Requests 1 and 3 fail with ``kinds`` and every other one with probability 0.2."""
    clean, gets = clean_run
    assert gets >= FILES  # every file was fetched at least once
    faults = Faults(kinds=kinds, rate=0.2, on_requests={1, 3}, stall_seconds=2.5, seed=len(kinds))
    run_dir = tmp_path / "run"
    with FileServer(served, faults) as server:
        assert train_in_process(streaming_run(run_dir, corpus, server)) == 0
        requests = sum(method == "GET" for method, *_ in server.requests)
    injected = [kind for _, kind in faults.injected]
    assert len(injected) >= 2 and set(injected) <= set(kinds), injected
    assert losses(run_dir) == losses(clean)  # the same documents, in the same order
    assert_same_weights(run_dir, clean, STEPS)
    print(f"\nreliability: stream faults {requests} GETs, injected {injected}")


def test_source_down_beyond_retries_stops_cleanly_and_resumes(
    corpus, served, clean_run, tmp_path, fast_network, capsys
):
    clean, _ = clean_run
    run_dir = tmp_path / "run"
    with FileServer(served) as server:
        # Half the run with the source up (the clean run's prefix: the schedule is constant).
        config = streaming_run(run_dir, corpus, server, **{"scheduler.total_steps": STEPS // 2})
        assert train_in_process(config) == 0
        before = {
            p.name: ckpt.verify_checkpoint(p)
            for p in ckpt.list_checkpoints(run_dir / "checkpoints")
        }
        # Then it goes down for good: every request fails, beyond the retry budget.
        server.faults = Faults(kinds=("503",), rate=1.0)
        config = streaming_run(run_dir, corpus, server)
        capsys.readouterr()
        assert train_in_process(config, "--resume") == 3
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "read failed after 6 retries" in err[0], err
        assert "503" in err[0] and err[0].endswith(
            f"continue with `lmstream train --config {config} --resume`"
        ), err
        after = assert_checkpoints_complete(run_dir / "checkpoints")
        assert {p.name: ckpt.verify_checkpoint(p) for p in after} == before
        assert len(server.faults.injected) == 7  # the first try and 6 retries
        server.faults = Faults()  # the source is back
        assert train_in_process(config, "--resume") == 0
    assert_same_weights(run_dir, clean, STEPS)


def test_source_down_mid_run_saves_the_progress_and_resumes_exactly(
    corpus, served, tmp_path, fast_network, capsys
):
    """The source goes down for good when the reader re-opens a file in the second pass (read
    in batches of 20 records, mid-pass), partway through an optimizer step's micro-batches. The run stops
    with exit 3 but saves a checkpoint at its last step (not just the last periodic one), holding
    the micro-batches the unfinished step already took; resuming once the source is back feeds
    them first and ends exactly as the run that never failed."""
    # A pass is 315 steps; the failure lands at step 421 (the order is the seed's, the schedule
    # constant), so the run need not go on much past it: fewer steps, the same failure.
    steps = 460
    overrides = {
        "stream_batch_size": 20,
        "scheduler.total_steps": steps,
        "data.gradient_accumulation_steps": 3,
        "runtime.checkpoint.every_n_steps": 1000,  # no periodic checkpoint before the failure
    }
    with FileServer(served) as server:
        clean_dir = tmp_path / "clean"
        assert train_in_process(streaming_run(clean_dir, corpus, server, **overrides)) == 0
        gets = [path for method, path, _ in server.requests if method == "GET"]
        # A shuffled pass opens its files at its start; part-1.jsonl is requested there in the
        # first pass, once to count it before the second, at the second's start, and then the
        # second pass (which reads each file from a drawn point on first) re-opens it for its
        # first part, mid-pass: the 4th request of it.
        ones = [i for i, path in enumerate(gets) if path.endswith("part-1.jsonl")]
        reopen = 1 + ones[3]
    with FileServer(served) as server:
        server.faults = Faults(kinds=("503",), on_requests=set(range(reopen, 10**6)))
        run_dir = tmp_path / "run"
        config = streaming_run(run_dir, corpus, server, **overrides)
        capsys.readouterr()
        assert train_in_process(config) == 3
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "read failed after 6 retries" in err[0], err
        saved = ckpt.complete_checkpoints(run_dir / "checkpoints")
        assert len(saved) == 1, saved
        step = ckpt.read_manifest(saved[0])["step"]
        assert 0 < step < steps and f"checkpoint saved at step {step}" in err[0]
        assert err[0].endswith(f"once it answers, continue with `lmstream train --config {config} --resume`")  # fmt: skip
        assert losses(run_dir) == {s: v for s, v in losses(clean_dir).items() if s <= step}
        pending = ckpt.load_trainer_state(saved[0])["pending"]
        assert 0 < len(pending[0]) < 3  # taken mid-step: the case a plain resume would skip
        server.faults = Faults()  # the source is back
        assert train_in_process(config, "--resume") == 0
    assert losses(run_dir) == losses(clean_dir)
    assert_same_weights(run_dir, clean_dir, steps)
