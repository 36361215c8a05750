"""A stop signal while the streaming source is retrying (issue #19, item 12): the run must not
sit out the retry budget (minutes with the defaults, beyond a pod's 30 s grace period) before
acting on SIGTERM. The fetch in progress is dropped, the last finished step is saved with the
loader's position from before that fetch, and a resume once the source is back ends exactly
as a run that was never stopped."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest
from tests.reliability.support import (
    assert_same_weights,
    logged_steps,
    start_train,
    subprocess_env,
    tiny_config,
    wait_until,
)
from tests.support.http_server import Faults, FileServer
from tests.support.training import short_document_files, train_in_process, write_run

from lmstream.data import sources
from lmstream.train import checkpoint as ckpt

pytestmark = pytest.mark.slow
STEPS = 40
PARTS = 200  # small files of short documents: a worker's next chunk of documents (the loader
# tokenizes ~256 at a time) opens new files around step 20
# The retry budget of the stalled source: 11 reads of 1 s plus backoffs of 2, 4, 4, ... s,
# about 50 s; a stop that waited for it would take that long.
RETRIES = {
    sources.READ_TIMEOUT_ENV: "1",
    sources.RETRY_DELAY_ENV: "2",
    sources.MAX_RETRY_DELAY_ENV: "4",
    sources.MAX_RETRIES_ENV: "10",
}
STOP_BOUND_S = 15  # signal to exit, checkpoint included, on 2 busy cores


@pytest.fixture(scope="module")
def parts(corpus) -> dict[str, bytes]:
    return short_document_files(corpus, PARTS)


def _streaming_run(run_dir: Path, corpus: Path, server: FileServer, workers: int) -> Path:
    cfg = tiny_config(corpus, **{"scheduler.total_steps": STEPS, "data.train_shards": []})
    # Two micro-batches per step from each worker: their chunks last as long as one worker's.
    accum = 2 * max(workers, 1)
    cfg["data"].update(
        num_workers=workers, batch_size=16, shuffle_buffer_size=8, gradient_accumulation_steps=accum
    )
    cfg["runtime"]["checkpoint"]["every_n_steps"] = 1000  # only the stop's checkpoint
    config = write_run(run_dir, cfg)
    urls = [server.url(f"part-{k:03d}.jsonl") for k in range(PARTS)]
    # Small record batches: files are opened one by one as training goes.
    streaming = {"dataset": urls[0], "data_files": urls, "split": "train", "stream_batch_size": 4}
    (run_dir / "streaming_config.json").write_text(json.dumps(streaming))
    return config


def _losses(run_dir: Path) -> dict[int, float]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r["loss"] for r in map(json.loads, lines) if "loss" in r}


# num_workers 2 (what users run) in CI; in-process reading (0) with the heavy ones (+45 s).
@pytest.mark.parametrize("workers", [pytest.param(0, marks=pytest.mark.heavy), 2])
def test_sigterm_while_the_source_retries_stops_at_once_and_resumes_exactly(
    corpus, parts, tmp_path, monkeypatch, workers
):
    for name, value in RETRIES.items():
        monkeypatch.setenv(name, value)
    with FileServer(parts) as server:
        clean = tmp_path / "clean"
        assert train_in_process(_streaming_run(clean, corpus, server, workers)) == 0
    with FileServer(parts) as server:
        run_dir = tmp_path / "run"
        config = _streaming_run(run_dir, corpus, server, workers)
        proc = start_train(config, env=subprocess_env(**RETRIES))
        assert wait_until(proc, lambda: any(s >= 3 for s in logged_steps(run_dir)))
        server.faults = Faults(kinds=("stall",), rate=1.0, stall_seconds=60)
        assert wait_until(proc, lambda: len(server.faults.injected) >= 2, timeout=60)
        time.sleep(1.5)  # in the backoff between two attempts, or in a stalled read
        last = max(logged_steps(run_dir))
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
        elapsed = time.monotonic() - started
        print(f"SIGTERM to exit: {elapsed:.1f} s (workers {workers})")
        assert elapsed < STOP_BOUND_S, (elapsed, err)
        assert proc.returncode == 0, err
        step = max(logged_steps(run_dir))
        assert step < STEPS and step <= last + 3, err  # stopped where it was waiting
        assert f"while waiting for data, at step {step}; checkpoint saved" in out + err, err
        folder = ckpt.resolve_checkpoint(run_dir / "checkpoints", check_hashes=True)
        assert ckpt.read_manifest(folder)["step"] == step
        server.faults = Faults()  # the source is back
        assert train_in_process(config, "--resume") == 0
    assert _losses(run_dir) == _losses(clean)
    assert_same_weights(run_dir, clean, STEPS)
