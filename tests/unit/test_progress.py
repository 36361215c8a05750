"""The training progress bar: on a terminal a tqdm bar (steps, ETA) whose tail shows the latest
loss and tokens/s; metric lines print above it; off a terminal, plain lines only."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest

from lmstream.train.metrics import StdoutLogger


def test_the_bar_shows_steps_loss_and_speed(capsys) -> None:
    logger = StdoutLogger(10, progress=True)
    logger.log(1, {"loss": 3.21, "tokens_per_s": 12345.0})
    logger.advance(1)
    logger.close()
    out, err = capsys.readouterr()
    assert "step 1/10 | loss 3.2100" in out  # the metric line, written above the bar
    bar = err.replace("\r", "\n").splitlines()[-1]
    assert "1/10" in bar and "loss 3.2100, 12,345 tok/s" in bar
    assert "<" in bar  # tqdm's elapsed<remaining: the ETA


def test_a_bar_past_an_estimated_total_grows_with_it(capsys) -> None:
    """A mixture planned in epochs may run a step past the first pass's estimate: the line
    marks the total as an estimate, and the bar never reads 11/10 (its total follows)."""
    logger = StdoutLogger(10, progress=True, estimate=True)
    logger.log(11, {"loss": 3.21})
    logger.advance(11)
    logger.close()
    out, err = capsys.readouterr()
    assert "step 11/~10 | loss 3.2100" in out
    bar = err.replace("\r", "\n").splitlines()[-1]
    assert "11/11" in bar and "11/10" not in bar, bar


def test_without_a_terminal_there_are_plain_lines_only(capsys) -> None:
    logger = StdoutLogger(10, progress=False)
    logger.log(1, {"loss": 3.21, "tokens_per_s": 12345.0})
    logger.advance(1)
    logger.close()
    out, err = capsys.readouterr()
    assert out == "step 1/10 | loss 3.2100 | 12,345 tok/s\n" and err == ""


# build_logger in a child whose stdout is a real terminal (a pty) and whose stderr is given:
# tqdm draws the bar on stderr, so that is the stream that must be a terminal.
_CHILD = """
import sys
from pathlib import Path
from tests.support.training import tiny_training_config
from lmstream.config import TrainingConfig
from lmstream.train.metrics import build_logger

cfg = TrainingConfig.model_validate(tiny_training_config(Path("corpus"), 3))
logger = build_logger(cfg, rank=0, total_steps=3)
bar = logger.loggers[0]._bar is not None
for step in (1, 2, 3):
    logger.log(step, {"loss": 1.0})
    logger.advance(step)
logger.close()
Path(sys.argv[1]).write_text(str(bar))
"""


@pytest.mark.parametrize(
    ("stderr_tty", "term", "expected"),
    [(True, "xterm", True), (False, "xterm", False), (True, "dumb", False)],
)
def test_the_bar_needs_a_terminal_to_draw_on(
    tmp_path: Path, stderr_tty: bool, term: str, expected: bool
) -> None:
    out_master, out_slave = pty.openpty()
    err_master, err_slave = pty.openpty()
    err_file = open(tmp_path / "stderr.log", "wb")  # noqa: SIM115
    env = {**os.environ, "TERM": term, "PYTHONPATH": os.pathsep.join(sys.path)}
    try:
        subprocess.run(
            [sys.executable, "-c", _CHILD, str(tmp_path / "bar")],
            stdout=out_slave,
            stderr=err_slave if stderr_tty else err_file,
            env=env,
            cwd=tmp_path,
            check=True,
            timeout=120,
        )
    finally:
        for fd in (out_master, out_slave, err_master, err_slave):
            os.close(fd)
        err_file.close()
    assert (tmp_path / "bar").read_text() == str(expected)
    if not stderr_tty:  # a log file gets no carriage-return bar frames
        assert b"\r" not in (tmp_path / "stderr.log").read_bytes()
