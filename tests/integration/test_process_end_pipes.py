"""How `lmstream` behaves when the reader of its output goes away (review of the exit path):
`lmstream train 2>&1 | head` (stdout and stderr one pipe) trains to its end like `| head`."""

from __future__ import annotations

import os
import signal
import subprocess

from tests.support.process_runs import (
    LMSTREAM,
    OFFLINE_ENV,
    assert_no_process_left,
    assert_trained_to,
    run_train,
    start_train,
)
from tests.support.training import kjv_corpus_fixture, tiny_training_config, write_run

corpus = kjv_corpus_fixture(60, 300)


def test_a_run_whose_stdout_and_stderr_reader_goes_away_trains_to_its_end(corpus, tmp_path):
    """`lmstream train 2>&1 | head -1`: stderr is the same closed pipe, so the notice that
    stdout is gone (written to stderr) raised BrokenPipeError in turn: the run died at its
    first metric line with exit 1, no metrics and no checkpoint."""
    run = tmp_path / "run"
    cfg = tiny_training_config(corpus, 40, **{"data.num_workers": 2})
    config = write_run(run, cfg)
    proc = start_train(config, stderr=subprocess.STDOUT)
    assert proc.stdout.readline()  # one line, then the reader is gone
    proc.stdout.close()
    proc.wait(timeout=300)
    assert proc.returncode == 0
    assert_trained_to(run, 40)
    assert_no_process_left(config)


def test_generate_into_a_closed_pipe_ends_without_a_traceback(corpus, tmp_path):
    """`lmstream generate ... | head -c 20`: the reader goes away while text streams out. The
    BrokenPipeError ended the command as a bug does (its traceback, exit 1); a closed reader
    is not a bug: no traceback, and not 0 either (the text was not all delivered)."""
    run = tmp_path / "run"
    config = write_run(run, tiny_training_config(corpus, 2))
    trained = run_train(config)
    assert trained.returncode == 0, trained.stderr
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first token (head -c N that got its N)
    try:
        done = subprocess.run(
            [str(LMSTREAM), "generate", "--checkpoint", str(run), "--prompt", "In the",
             "--max-new-tokens", "20", "--device", "cpu"],
            env=OFFLINE_ENV,
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            timeout=300,
        )  # fmt: skip
    finally:
        os.close(write)
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode not in (0, 1), done.stderr


def test_ctrl_c_to_a_run_piped_into_tee_saves_its_checkpoint(corpus, tmp_path):
    """`lmstream train 2>&1 | tee train.log`, then Ctrl-C: the terminal signals the whole
    pipeline, tee ends first, and the stop notice that the handler writes to stderr (the
    closed pipe) raised BrokenPipeError inside the handler: the run died without the
    checkpoint that the signal asks for. It now saves it and exits 0 like any stop."""
    run = tmp_path / "run"
    cfg = tiny_training_config(
        corpus, 3000, **{"data.num_workers": 2, "runtime.log_every_n_steps": 50}
    )
    config = write_run(run, cfg)
    proc = start_train(
        config,
        stderr=subprocess.STDOUT,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    for line in proc.stdout:  # the first metric line: training runs, the next is 50 steps off
        if line.startswith("step "):
            break
    proc.stdout.close()  # tee is gone
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=300)
    saved = list((run / "checkpoints").glob("step-*")) if (run / "checkpoints").exists() else []
    assert saved, f"no checkpoint after the stop (exit {proc.returncode})"
    assert proc.returncode == 0
