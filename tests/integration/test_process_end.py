"""The `lmstream` program (console script) ends without the interpreter's finalization
(lmstream.process_exit): a native thread still running at exit (tests/support/exit_probe.py)
no longer aborts a finished run, atexit handlers still run, and what the run wrote is whole."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.support.exit_probe import exit_probe_env
from tests.support.process_runs import (
    OFFLINE_ENV,
    assert_no_process_left,
    assert_trained_to,
    run_train,
    start_train,
    with_sitecustomize,
)
from tests.support.training import kjv_corpus_fixture, tiny_training_config, write_run

corpus = kjv_corpus_fixture(60, 300)


def test_a_finished_run_exits_0_with_a_native_thread_running(corpus, tmp_path):
    run = tmp_path / "run"
    cfg = tiny_training_config(corpus, 3, **{"runtime.logging": {"tensorboard": "tb"}})
    config = write_run(run, cfg)
    env, markers = exit_probe_env(tmp_path, OFFLINE_ENV)
    done = run_train(config, env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "terminate called" not in done.stderr, done.stderr
    assert "== done: step 3 of 3" in done.stdout, done.stdout
    assert [p.name for p in markers.iterdir()] == ["atexit-main"]
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert lines and lines[-1].endswith("}"), lines[-1:]
    events = list((run / "tb").rglob("events.out.tfevents.*"))
    assert events and all(e.stat().st_size > 0 for e in events), events


def test_a_command_whose_output_is_lost_at_exit_does_not_exit_0(corpus, tmp_path):
    # `lmstream train --dry-run > plan.txt` on a full disk: the plan, buffered until exit, is
    # never written; the command failed with 120 before it ended without finalization, then 0.
    config = write_run(tmp_path / "run", tiny_training_config(corpus, 3))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    env |= {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    lmstream = Path(sys.executable).parent / "lmstream"
    with open("/dev/full", "w") as full:
        done = subprocess.run(
            [str(lmstream), "train", "--config", str(config), "--dry-run"],
            env=env,
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
        )
    assert done.returncode == 120, done.stderr
    assert "No space left on device" in done.stderr, done.stderr


# A bug in the training loop, injected into the child: the third metric line raises.
_BUG_AT_STEP_3 = """
from lmstream.train import metrics

_log = metrics.StdoutLogger.log

def _log_with_a_bug(self, step, values):
    if step == 3:
        raise RuntimeError("injected bug at step 3")
    return _log(self, step, values)

metrics.StdoutLogger.log = _log_with_a_bug
"""


def test_a_bug_mid_training_ends_the_process_instead_of_hanging(corpus, tmp_path):
    # An exception that is no lmstream error (a bug) escapes `lmstream train` with 2 loader
    # workers. Left to the interpreter's finalization, the training loader's generator still
    # held by the traceback was closed during module teardown, where the thread its cleanup
    # starts (worker_processes.stop_workers) never runs: the process hung for good after its
    # traceback (first seen as `lmstream train | head -3` raising BrokenPipeError).
    cfg = tiny_training_config(
        corpus, 200, **{"data.num_workers": 2, "runtime.log_every_n_steps": 1}
    )
    config = write_run(tmp_path / "run", cfg)
    env = with_sitecustomize(OFFLINE_ENV, tmp_path / "bug-site", _BUG_AT_STEP_3)
    done = run_train(config, env, timeout=120)
    assert done.returncode == 1, done.stderr
    assert done.stderr.count("Traceback") == 1, done.stderr
    assert "RuntimeError: injected bug at step 3" in done.stderr, done.stderr
    assert_no_process_left(config)  # no data loader worker left behind


def test_a_run_whose_stdout_reader_goes_away_trains_to_its_end(corpus, tmp_path):
    """`lmstream train | head -1`: the reader closes the pipe after one line; the run went on to
    die on BrokenPipeError without its last checkpoint. It now trains to its end and saves."""
    run = tmp_path / "run"
    cfg = tiny_training_config(corpus, 40, **{"runtime.log_every_n_steps": 1})
    config = write_run(run, cfg)
    proc = start_train(config)
    assert proc.stdout.readline()  # one line, then the reader is gone
    proc.stdout.close()
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "stdout was closed by its reader; training continues" in err, err
    assert_trained_to(run, 40, err)
