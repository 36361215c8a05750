"""`lmstream train` on a data mixture, end to end through the CLI.

Files-mode ``data.mixture`` and hand-written version-2 streaming_config.json files, three
sources of unequal document lengths (tests/support/mixture.py), 2 real DataLoader workers:

* exact resume after SIGKILL, twice (subprocesses), against an uninterrupted reference run;
* a source on the loopback HTTP server failing 20% of requests, stopped by SIGKILL and
  resumed: the same losses and weights as a fault-free uninterrupted run;
* per-source metrics read back from metrics.jsonl, TensorBoard's event files and the stdout
  line, and ``lmstream plot``; ``val_loss`` is the weight-averaged mean of ``val_loss/NAME``;
* resume with changed weights prints one line; ``scheduler.total_epochs`` counts passes over
  the largest-weight source (with workers: test_mixture_epochs_train.py);
* bad input (a source without documents, a source lacking its text_field): one line naming
  the source, exit 3, nothing written.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tests.integration.test_train import wait_for_step
from tests.reliability.support import assert_same_weights
from tests.support.http_server import Faults, FileServer
from tests.support.mixture import mixture_config, write_sources
from tests.support.training import train_in_process, write_run

from lmstream.cli import main as cli_main
from lmstream.data import sources as data_sources
from lmstream.train import checkpoint as ckpt

pytestmark = pytest.mark.slow
STEPS = 24
WEIGHTS = {"a": 0.5, "b": 0.3, "c": 0.2}


@pytest.fixture(scope="module")
def mix(tmp_path_factory):
    root = tmp_path_factory.mktemp("mix")
    return root, write_sources(root, {"a": 400, "b": 100, "c": 200}, files=2)


def _config(mix, weights=WEIGHTS, **overrides) -> dict:
    root, paths = mix
    return mixture_config(root, paths, weights, STEPS, **{
        "data.num_workers": 2,
        "model.residual_dropout": 0.1,
        "runtime.checkpoint": {"every_n_steps": 4, "max_keep": 2, "async_save": False},
        "runtime.evaluation": {"every_n_steps": 12, "max_batches": 2},
        "runtime.logging": {"tensorboard": "tb", "enable_stdout": True},
        **overrides,
    })  # fmt: skip


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in _records(run_dir) if "loss" in r}


@pytest.fixture(scope="module")
def reference(mix, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("reference")
    assert train_in_process(write_run(run_dir, _config(mix))) == 0
    return run_dir


def _kill_at(config: Path, run_dir: Path, step: int, *extra: str) -> None:
    """Run `lmstream train` in a subprocess and SIGKILL it once metrics reach ``step``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "lmstream", "train", "--config", str(config), *extra],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        wait_for_step(run_dir, proc, step)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == -signal.SIGKILL


def test_sigkill_twice_resumes_bit_exact(mix, reference, tmp_path):
    run_dir = tmp_path / "run"
    config = write_run(run_dir, _config(mix))
    _kill_at(config, run_dir, 6)
    _kill_at(config, run_dir, 14, "--resume")  # a resumed run killed: the second resume
    assert train_in_process(config, "--resume") == 0
    assert _losses(run_dir) == _losses(reference)
    assert_same_weights(run_dir, reference, STEPS)


def test_per_source_metrics_everywhere(mix, reference, capsys, tmp_path):
    records = _records(reference)
    train = [r for r in records if "loss" in r]
    assert {"tokens_seen/a", "tokens_seen/b", "tokens_seen/c", "epoch/a"} <= set(train[0])
    last = train[-1]
    seen = [last[f"tokens_seen/{n}"] for n in "abc"]
    assert sum(seen) == last["tokens_seen"]  # every target token is some source's
    assert abs(seen[0] / sum(seen) - 0.5) < 0.05
    vals = [r for r in records if "val_loss" in r]
    assert [r["step"] for r in vals] == [12, 24]
    for r in vals:
        mean = sum(WEIGHTS[n] * r[f"val_loss/{n}"] for n in "abc")
        assert r["val_loss"] == pytest.approx(mean, rel=1e-12)
    acc = EventAccumulator(str(reference / "tb"))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert {"val/loss/a", "val/loss/b", "val/loss/c", "train/tokens_seen/a"} <= set(tags)
    assert [e.step for e in acc.Scalars("val/loss/b")] == [12, 24]
    out = tmp_path / "curves.png"
    assert cli_main(["plot", str(reference), "--out", str(out)]) == 0
    assert out.stat().st_size > 0


def test_one_source_metrics_have_no_source_keys(mix, tmp_path):
    root, paths = mix
    cfg = _config(mix, {"a": 1.0}, **{"data.num_workers": 0, "scheduler.total_steps": 2})
    run_dir = tmp_path / "one"
    assert train_in_process(write_run(run_dir, cfg)) == 0
    assert not any("/" in k for r in _records(run_dir) for k in r)


def test_weight_change_on_resume_is_one_line(mix, reference, tmp_path, capsys):
    run_dir = tmp_path / "run"
    cfg = _config(mix, {"a": 0.2, "b": 0.3, "c": 0.5}, **{"scheduler.total_steps": STEPS + 4})
    config = write_run(run_dir, cfg)
    assert train_in_process(config, "--resume", str(reference / "checkpoints")) == 0
    out = capsys.readouterr().out
    lines = [x for x in out.splitlines() if "data mixture changed on resume" in x]
    assert len(lines) == 1 and "a 0.5 -> 0.2" in lines[0] and "c 0.2 -> 0.5" in lines[0]


def test_total_epochs_counts_the_largest_weight_source(tmp_path):
    root = tmp_path / "small"
    root.mkdir()
    paths = write_sources(root, {"a": 24, "b": 24})  # a's documents are much shorter
    cfg = mixture_config(root, paths, {"a": 0.45, "b": 0.55}, **{
        "scheduler.total_steps": None, "scheduler.total_epochs": 1,
        "data.validation_documents": 8, "data.shuffle_buffer_size": 0,
    })  # fmt: skip
    run_dir = tmp_path / "run"
    assert train_in_process(write_run(run_dir, cfg)) == 0
    last = [r for r in _records(run_dir) if "loss" in r][-1]
    assert last["epoch/b"] == 0  # the primary source's one pass, no more
    assert last["epoch/a"] >= 1  # the smaller source restarted as its own next epoch


@pytest.mark.parametrize("bad", ["empty", "text_field"])
def test_bad_source_is_one_line_naming_it(mix, tmp_path, capsys, bad):
    root, paths = mix
    run_dir = tmp_path / "run"
    if bad == "empty":
        empty = tmp_path / "empty.jsonl"
        empty.write_text("")
        config = write_run(run_dir, mixture_config(root, {**paths, "b": [str(empty)]}, WEIGHTS))
    else:
        cfg = mixture_config(root, paths, WEIGHTS, **{"data.train_shards": []})
        del cfg["data"]["mixture"]
        config = write_run(run_dir, cfg)
        sources = [{"name": n, "weight": w, "dataset": paths[n][0], "data_files": paths[n]}
                   for n, w in WEIGHTS.items()]  # fmt: skip
        sources[1]["text_field"] = "body"
        sc = {"version": 2, "sources": sources}
        (run_dir / "streaming_config.json").write_text(json.dumps(sc))
    before = sorted(p.name for p in run_dir.iterdir())
    assert train_in_process(config) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "data source 'b'" in err[0], err
    assert ("yields no documents" if bad == "empty" else "'body'") in err[0]
    assert sorted(p.name for p in run_dir.iterdir()) == before  # nothing written


@pytest.fixture
def fast_network(monkeypatch):
    monkeypatch.setenv(data_sources.READ_TIMEOUT_ENV, "1")
    monkeypatch.setenv(data_sources.RETRY_DELAY_ENV, "0.02")
    monkeypatch.setenv(data_sources.MAX_RETRY_DELAY_ENV, "0.1")
    monkeypatch.setenv(data_sources.MAX_RETRIES_ENV, "6")


def _http_run(run_dir: Path, mix, server: FileServer, **overrides) -> Path:
    root, paths = mix
    cfg = _config(mix, **{"data.train_shards": [], **overrides})
    del cfg["data"]["mixture"]
    config = write_run(run_dir, cfg)
    urls = [server.url(Path(p).name) for p in paths["b"]]
    sources = [
        {"name": "a", "weight": 0.6, "dataset": paths["a"][0], "data_files": paths["a"]},
        {"name": "web", "weight": 0.4, "dataset": urls[0], "data_files": urls},
    ]
    sc = {"version": 2, "sources": sources, "stream_batch_size": 16}
    (run_dir / "streaming_config.json").write_text(json.dumps(sc))
    return config


def test_http_source_failing_a_fifth_of_requests_resumes_exactly(mix, tmp_path, fast_network):
    root, paths = mix
    served = {Path(p).name: Path(p).read_bytes() for p in paths["b"]}
    clean = tmp_path / "clean"
    with FileServer(served) as server:
        assert train_in_process(_http_run(clean, mix, server)) == 0
    faults = Faults(kinds=("drop", "503", "500"), rate=0.2, on_requests={1, 3}, seed=5)
    run_dir = tmp_path / "run"
    with FileServer(served, faults) as server:
        config = _http_run(run_dir, mix, server)
        _kill_at(config, run_dir, 10)
        assert train_in_process(config, "--resume") == 0
    assert len(faults.injected) >= 2
    assert _losses(run_dir) == _losses(clean)
    assert_same_weights(run_dir, clean, STEPS)


def test_source_down_mid_step_keeps_each_sources_tokens(mix, tmp_path, fast_network, capsys):
    """A small web source (re-read every few steps) goes down for good partway through an
    optimizer step's micro-batches: the run saves them as the checkpoint's pending ones, and
    once the source is back the resumed run feeds them first. Its ``tokens_seen/NAME`` still
    add up to ``tokens_seen`` and equal the uninterrupted run's (the pending micro-batches lost
    their per-source counts, so each source's fell short)."""
    root, paths = mix
    lines = Path(paths["b"][0]).read_text().splitlines(keepends=True)
    served = {"web.jsonl": "".join(lines[:7]).encode()}
    over = {"data.num_workers": 0, "data.gradient_accumulation_steps": 3,  # requests in order
            "data.validation_documents": 4, "runtime.evaluation.every_n_steps": None}  # fmt: skip

    def run(run_dir: Path, server: FileServer) -> Path:
        cfg = _config(mix, **{"data.train_shards": [], **over})
        del cfg["data"]["mixture"]
        config = write_run(run_dir, cfg)
        url = server.url("web.jsonl")
        sources = [{"name": "a", "weight": 0.6, "dataset": paths["a"][0], "data_files": paths["a"]},
                   {"name": "web", "weight": 0.4, "dataset": url, "data_files": [url]}]  # fmt: skip
        sc = {"version": 2, "sources": sources, "stream_batch_size": 4}
        (run_dir / "streaming_config.json").write_text(json.dumps(sc))
        return config

    with FileServer(served) as server:
        clean = tmp_path / "clean"
        assert train_in_process(run(clean, server)) == 0
        gets = sum(method == "GET" for method, _, _ in server.requests)
    for down in range(gets // 2, gets):  # the first request whose failure cuts a step short
        run_dir = tmp_path / f"run-{down}"
        with FileServer(
            served, Faults(kinds=("503",), on_requests=set(range(down, 10**6)))
        ) as server:
            config = run(run_dir, server)
            failed = train_in_process(config) == 3
            saved = ckpt.complete_checkpoints(run_dir / "checkpoints")
            if failed and saved and ckpt.load_trainer_state(saved[-1]).get("pending", [[]])[0]:
                server.faults = Faults()  # the source is back
                assert train_in_process(config, "--resume") == 0
                break
    else:
        pytest.fail("no failure fell inside a step")
    capsys.readouterr()
    assert _losses(run_dir) == _losses(clean)
    last = [r for r in _records(run_dir) if "loss" in r][-1]
    want = [r for r in _records(clean) if "loss" in r][-1]
    assert last["tokens_seen/a"] + last["tokens_seen/web"] == last["tokens_seen"]
    assert (last["tokens_seen/a"], last["tokens_seen/web"]) == (
        want["tokens_seen/a"], want["tokens_seen/web"])  # fmt: skip


def test_eval_reproduces_the_logged_weighted_val_loss(reference, capsys):
    """`lmstream eval` on a mixture checkpoint prints what the run logged at that step: each
    ``val_loss/NAME`` and ``val_loss`` = their weighted mean (not a token-weighted mean of all
    sources' rows, which would let the longest validation documents decide)."""
    logged = [r for r in _records(reference) if "val_loss" in r and r["step"] == STEPS][0]
    step = reference / "checkpoints" / f"step-{STEPS:08d}"
    assert cli_main(["eval", "--checkpoint", str(step), "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for name in WEIGHTS:
        assert result[f"val_loss/{name}"] == pytest.approx(logged[f"val_loss/{name}"], rel=1e-6)
    assert result["val_loss"] == pytest.approx(logged["val_loss"], rel=1e-6)


def test_eval_on_files_of_a_mixture_checkpoint(mix, reference, capsys):
    """`lmstream eval --data FILE` on a files-mode mixture's checkpoint evaluates those files
    as one set (it crashed on the schema's mixture-vs-train_shards check)."""
    root, paths = mix
    best = str(reference / "best")
    assert cli_main(["eval", "--checkpoint", best, "--data", *paths["b"], "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["tokens"] > 0 and not any("/" in k for k in result)
    assert cli_main(["eval", "--checkpoint", best]) == 0  # the text form names every source
    out = capsys.readouterr().out
    assert all(f"val_loss/{n}" in out for n in WEIGHTS), out


def test_eval_uses_the_weights_the_checkpoint_logged(mix, tmp_path, capsys):
    """A streaming mixture whose streaming_config.json has since got new weights (as a resume
    that changes the mix leaves it): `lmstream eval` of an earlier checkpoint still reproduces
    the val_loss that checkpoint's run logged, from the weights it trained with."""
    root, paths = mix
    run_dir = tmp_path / "run"
    cfg = _config(mix, **{"data.train_shards": [], "scheduler.total_steps": 12})
    del cfg["data"]["mixture"]
    write_run(run_dir, cfg)
    sources = [{"name": n, "weight": w, "dataset": paths[n][0], "data_files": paths[n]}
               for n, w in (("a", 0.7), ("b", 0.3))]  # fmt: skip
    sc_path = run_dir / "streaming_config.json"
    sc_path.write_text(json.dumps({"version": 2, "sources": sources}))
    assert train_in_process(run_dir / "training.yaml") == 0
    logged = [r for r in _records(run_dir) if "val_loss" in r][-1]
    sources[0]["weight"], sources[1]["weight"] = 0.1, 0.9
    sc_path.write_text(json.dumps({"version": 2, "sources": sources}))
    capsys.readouterr()
    assert cli_main(["eval", "--checkpoint", str(run_dir / "checkpoints"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["val_loss/b"] == pytest.approx(logged["val_loss/b"], rel=1e-6)
    assert result["val_loss"] == pytest.approx(logged["val_loss"], rel=1e-6)


def test_sigkill_after_a_weight_change_resumes_bit_exact(mix, reference, tmp_path):
    """Resume with new weights, SIGKILL a few steps later, resume again (at the new weights,
    from the changed run's own checkpoint): the same losses and weights as a run that changed
    the weights and never stopped."""
    cfg = _config(mix, {"a": 0.2, "b": 0.3, "c": 0.5}, **{"scheduler.total_steps": STEPS + 12})
    start = str(reference / "checkpoints" / f"step-{STEPS:08d}")
    unbroken = tmp_path / "unbroken"
    assert train_in_process(write_run(unbroken, cfg), "--resume", start) == 0
    run_dir = tmp_path / "run"
    config = write_run(run_dir, cfg)
    _kill_at(config, run_dir, STEPS + 6, "--resume", start)
    assert train_in_process(config, "--resume") == 0
    assert _losses(run_dir) == _losses(unbroken)
    assert_same_weights(run_dir, unbroken, STEPS + 12)
