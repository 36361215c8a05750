"""The training progress bar: on a terminal a tqdm bar (steps, ETA) whose tail shows the latest
loss and tokens/s; metric lines print above it; off a terminal, plain lines only."""

from __future__ import annotations

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


def test_without_a_terminal_there_are_plain_lines_only(capsys) -> None:
    logger = StdoutLogger(10, progress=False)
    logger.log(1, {"loss": 3.21, "tokens_per_s": 12345.0})
    logger.advance(1)
    logger.close()
    out, err = capsys.readouterr()
    assert out == "step 1/10 | loss 3.2100 | 12,345 tok/s\n" and err == ""
