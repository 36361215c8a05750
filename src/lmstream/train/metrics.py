"""Metric logging: a Logger interface with a no-op base, and stdout, TensorBoard and JSONL writers.

The loop calls ``logger.log(step, {"loss": ..., "lr": ...})`` at log steps and evaluations and
``logger.advance(step)`` after every optimizer step (the progress bar). Only rank 0 writes:
:func:`build_logger` returns the no-op base on other ranks (torchtitan's pattern).

Keys written (one JSON object per line in metrics.jsonl): step, loss, lr, grad_norm,
tokens_per_s (training time only), eval_checkpoint_s (evaluation and checkpoint time since the
previous log), mfu, data_wait_s, memory_gb, skipped_steps, and val_loss/val_ppl at evaluations.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

from lmstream import process_exit
from lmstream.config import TrainingConfig


def stdout_gone() -> None:
    """stdout's reader has gone (`lmstream train | head`, a closed `tee`): the run goes on, its
    lines still reach metrics.jsonl and the other writers. fd 1 is pointed at /dev/null, so
    later lines and the buffered rest are dropped instead of raising BrokenPipeError (which
    ended the run without a checkpoint), and stderr says so once. When stderr is that same
    closed pipe (`lmstream train 2>&1 | head`), the notice cannot be written either: fd 2 goes
    to /dev/null too (the notice raised BrokenPipeError, and the run died at once)."""
    process_exit.to_devnull(sys.stdout)
    process_exit.say(
        "lmstream: stdout was closed by its reader; training continues, its metric lines are "
        "in metrics.jsonl (and TensorBoard, when on)"
    )


class Logger:
    """The interface, and the logger of ranks that do not write: every method does nothing."""

    def log(self, step: int, metrics: dict[str, float]) -> None:
        pass

    def advance(self, step: int) -> None:
        pass

    def message(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass

    def state_dict(self) -> dict:
        """What a checkpoint keeps so a resumed run continues the same tracker run (run ids)."""
        return {}


def format_metrics(
    step: int, total_steps: int | None, metrics: dict[str, float], estimate: bool = False
) -> str:
    """One human-readable line, e.g. ``step 50/300 | loss 3.2101 | lr 1.80e-04 | ...``.
    ``estimate``: the total only estimates the run's length (``step 63/~62``), as a mixture
    planned in epochs has: its last epoch may take a few steps more or fewer."""
    mark = "~" if estimate else ""
    parts = [f"step {step}" + (f"/{mark}{total_steps}" if total_steps else "")]
    formats = {
        "loss": "loss {:.4f}",
        "val_loss": "val_loss {:.4f}",
        "val_ppl": "val_ppl {:.2f}",
        "lr": "lr {:.2e}",
        "grad_norm": "grad_norm {:.3f}",
        "tokens_per_s": "{:,.0f} tok/s",
        "mfu": "mfu {:.1%}",
        "data_wait_s": "data_wait {:.3f}s",
        "eval_checkpoint_s": "eval+ckpt {:.1f}s",
        "memory_gb": "mem {:.2f}GB",
        "skipped_steps": "skipped {:.0f}",
    }
    for key, fmt in formats.items():
        value = metrics.get(key)
        quiet = (key == "skipped_steps" and value == 0) or (
            key == "eval_checkpoint_s" and (value or 0) < 0.05
        )
        if value is not None and not quiet:
            parts.append(fmt.format(value))
    parts += _per_source(metrics)
    return " | ".join(parts)


def _per_source(metrics: dict[str, float]) -> list[str]:
    """A mixture's per-source values, compactly: ``val a 3.12 b 3.40`` and each source's share
    of the tokens so far, ``mix a 50% b 30% c 20%`` (keys NAME of ``val_loss/NAME`` and
    ``tokens_seen/NAME``; nothing with one source, which logs no such keys)."""
    out = []
    val = {k[len("val_loss/") :]: v for k, v in metrics.items() if k.startswith("val_loss/")}
    if val:
        out.append("val " + " ".join(f"{n} {v:.4f}" for n, v in val.items()))
    seen = {k[len("tokens_seen/") :]: v for k, v in metrics.items() if k.startswith("tokens_seen/")}
    total = sum(seen.values())
    if total > 0:
        out.append("mix " + " ".join(f"{n} {v / total:.0%}" for n, v in seen.items()))
    return out


class StdoutLogger(Logger):
    """Metric lines on stdout; with ``progress`` (a terminal), a tqdm bar with ETA below them.
    With ``metrics=False`` (enable_stdout: false) only notices (checkpoint saved, resumed) print.
    ``estimate``: ``total_steps`` only estimates where the run ends (see format_metrics)."""

    def __init__(
        self,
        total_steps: int | None,
        start_step: int = 0,
        progress: bool = False,
        metrics: bool = True,
        estimate: bool = False,
    ):
        self.total_steps, self.estimate = total_steps, estimate
        self._metrics = metrics
        self._bar = None
        if progress:
            from tqdm import tqdm

            self._bar = tqdm(
                total=total_steps, initial=start_step, unit="step", dynamic_ncols=True, leave=True
            )

    def _write(self, text: str) -> None:
        try:
            if self._bar is not None:
                self._bar.write(text)
            else:
                print(text, flush=True)
        except BrokenPipeError:
            stdout_gone()

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if self._metrics:
            self._write(format_metrics(step, self.total_steps, metrics, self.estimate))
        if self._bar is not None and "loss" in metrics:  # the bar's tail: latest loss, speed
            postfix = f"loss {metrics['loss']:.4f}"
            if metrics.get("tokens_per_s") is not None:
                postfix += f", {metrics['tokens_per_s']:,.0f} tok/s"
            self._bar.set_postfix_str(postfix, refresh=False)

    def advance(self, step: int) -> None:
        if self._bar is not None:
            if self._bar.total is not None and step > self._bar.total:  # past an estimate
                self._bar.total = step
            self._bar.update(step - self._bar.n)

    def message(self, text: str) -> None:
        self._write(text)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class TensorBoardLogger(Logger):
    """Scalars under ``train/...`` (``val/...`` for validation), flushed every ``flush_every`` logs.

    On resume, ``purge_step`` makes TensorBoard hide the events an interrupted run wrote after
    the checkpoint, so curves do not double back.
    """

    def __init__(
        self, log_dir: str | os.PathLike, flush_every: int, resume_step: int | None = None
    ):
        from torch.utils.tensorboard import SummaryWriter

        purge = resume_step + 1 if resume_step is not None else None
        self._writer = SummaryWriter(log_dir=str(log_dir), purge_step=purge)
        self._flush_every = flush_every
        self._logged = 0

    def log(self, step: int, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            if value is None or not isinstance(value, int | float):
                continue
            tag = f"val/{key[4:]}" if key.startswith("val_") else f"train/{key}"
            tag = key if key.startswith("eval/") else tag  # harness results: eval/TASK/METRIC
            self._writer.add_scalar(tag, float(value), global_step=step)
        self._logged += 1
        if self._logged % self._flush_every == 0:
            self._writer.flush()

    def close(self) -> None:
        self._writer.flush()
        self._writer.close()


class JsonlLogger(Logger):
    """One JSON object per log call. On resume, lines past the checkpoint's step (written by the
    interrupted run after its last checkpoint) are dropped so each step appears once."""

    def __init__(self, path: str | os.PathLike, resume_step: int | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is None:
            self.path.write_text("")
        elif self.path.exists():
            self._truncate_after(resume_step)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - open for the run

    def _truncate_after(self, step: int) -> None:
        kept = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a torn last line from a killed run
            if isinstance(record, dict) and int(record.get("step", 0)) <= step:
                kept.append(line)
        self.path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")

    def log(self, step: int, metrics: dict[str, float]) -> None:
        record = {"step": step}
        for key, value in metrics.items():
            if isinstance(value, float) and not math.isfinite(value):
                value = None  # JSON has no NaN/inf
            record[key] = value
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class MultiLogger(Logger):
    def __init__(self, loggers: list[Logger]):
        self.loggers = loggers

    def log(self, step: int, metrics: dict[str, float]) -> None:
        for logger in self.loggers:
            logger.log(step, metrics)

    def advance(self, step: int) -> None:
        for logger in self.loggers:
            logger.advance(step)

    def message(self, text: str) -> None:
        for logger in self.loggers:
            logger.message(text)

    def close(self) -> None:
        for logger in self.loggers:
            logger.close()

    def state_dict(self) -> dict:
        return {k: v for logger in self.loggers for k, v in logger.state_dict().items()}


def on_terminal() -> bool:
    """Whether to draw a progress bar: stdout is a terminal (metric lines go there) and so is
    stderr (tqdm draws the bar there; `2> train.log` would fill the log with bar frames), and
    the terminal can redraw a line (TERM=dumb, e.g. an editor's shell buffer, cannot)."""
    return sys.stdout.isatty() and sys.stderr.isatty() and os.environ.get("TERM", "") != "dumb"


def build_logger(
    cfg: TrainingConfig,
    *,
    rank: int,
    total_steps: int | None,
    resume_step: int | None = None,
    progress: bool | None = None,
    tracker_state: dict | None = None,
    total_is_estimate: bool = False,
) -> Logger:
    """The writers that runtime.logging asks for; the no-op Logger on ranks other than 0.
    ``tracker_state``: the checkpoint's Logger.state_dict() when resuming.
    ``total_is_estimate``: the run ends with an epoch, not at ``total_steps``."""
    if rank != 0:
        return Logger()
    logging_cfg = cfg.runtime.logging
    show_bar = on_terminal() if progress is None else progress
    stdout = StdoutLogger(
        total_steps,
        resume_step or 0,
        progress=show_bar and logging_cfg.enable_stdout,
        metrics=logging_cfg.enable_stdout,
        estimate=total_is_estimate,
    )
    loggers: list[Logger] = [stdout]
    if logging_cfg.tensorboard is not None:
        loggers.append(
            TensorBoardLogger(
                logging_cfg.tensorboard, logging_cfg.tensorboard_flush_every_n, resume_step
            )
        )
    if logging_cfg.metrics_jsonl is not None:
        loggers.append(JsonlLogger(logging_cfg.metrics_jsonl, resume_step))
    if logging_cfg.wandb is not None or logging_cfg.trackio is not None:
        from lmstream.trackers import build_trackers

        loggers.extend(build_trackers(cfg, tracker_state))
    return MultiLogger(loggers)
