"""Experiment trackers behind the Logger interface: Weights & Biases and Trackio (optional extras).

They receive the same metric names and values as metrics.jsonl (non-finite values, which JSON
writes as null, are left out). A tracker is never a reason to lose a run: if it fails to start
or to log (no network, a bad key, a full disk), one warning is printed and training goes on
without it. The W&B run id goes into every checkpoint (``Logger.state_dict``) so that
``--resume`` continues the same W&B run instead of starting a new one.

The packages are imported only when a config asks for them; :func:`require_extras` turns a
missing one into one line naming the field and the ``pip install`` to run.
"""

from __future__ import annotations

import contextlib
import math
import sys

from lmstream.config import TrackioConfig, TrainingConfig, WandbConfig
from lmstream.errors import ConfigError
from lmstream.train.metrics import Logger

# config field -> (module to import, extra that installs it)
EXTRAS = {"wandb": ("wandb", "wandb"), "trackio": ("trackio", "trackio")}


def missing_extra(field: str, module: str, extra: str) -> ConfigError | None:
    """The one-line error for a config field whose optional package is not installed."""
    try:
        __import__(module)
    except ImportError:
        return ConfigError(
            f"{field}: the {module} package is not installed; pip install 'lmstream[{extra}]'"
        )
    return None


def require_extras(cfg: TrainingConfig) -> None:
    """Raise ConfigError before training starts when runtime.logging asks for a missing tracker."""
    logging_cfg = cfg.runtime.logging
    for field, (module, extra) in EXTRAS.items():
        if getattr(logging_cfg, field) is not None:
            error = missing_extra(f"runtime.logging.{field}", module, extra)
            if error is not None:
                raise error


def _scalars(metrics: dict[str, float]) -> dict[str, float]:
    """The values metrics.jsonl holds as numbers (it writes NaN/inf as null)."""
    out = {}
    for key, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if isinstance(value, float) and not math.isfinite(value):
            continue
        out[key] = value
    return out


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


class TrackerLogger(Logger):
    """Shared failure handling: the first error prints one warning and turns the tracker off."""

    label = "tracker"

    def __init__(self) -> None:
        self._run = None

    def _fail(self, what: str, exc: BaseException) -> None:
        print(
            f"warning: {self.label} {what} failed ({_one_line(exc)}); "
            f"training goes on without {self.label}",
            file=sys.stderr,
            flush=True,
        )
        run, self._run = self._run, None
        if run is not None:  # already failing: the warning above is the one to show
            with contextlib.suppress(Exception):
                self._finish(run)

    def _finish(self, run) -> None:
        run.finish()

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if self._run is None:
            return
        try:
            self._run.log(_scalars(metrics), step=step)
        except Exception as exc:
            self._fail("logging", exc)

    def close(self) -> None:
        run, self._run = self._run, None
        if run is not None:
            try:
                self._finish(run)
            except Exception as exc:
                print(f"warning: {self.label} finish failed ({_one_line(exc)})", file=sys.stderr)


class WandbLogger(TrackerLogger):
    """A W&B run; ``run_id`` (from the checkpoint) resumes that run."""

    label = "W&B"

    def __init__(self, cfg: WandbConfig, run_config: dict, run_id: str | None = None):
        super().__init__()
        # Kept even when W&B fails: the checkpoints of a resume made while W&B is down must
        # still name the run, so the next resume (W&B back) continues it.
        self._run_id = run_id
        try:
            import wandb

            self._run = wandb.init(
                project=cfg.project,
                entity=cfg.entity,
                name=cfg.name,
                mode=cfg.mode,
                config=run_config,
                id=run_id,
                resume="allow" if run_id else None,
                # console="off": the run's stdout is the user's; W&B would copy all of it.
                settings=wandb.Settings(console="off", quiet=True),
            )
        except Exception as exc:  # wandb raises its own error types and plain ones
            self._fail("start", exc)

        if self._run is not None:
            self._run_id = self._run.id
            try:
                # The training step is a logged value that W&B plots against (as transformers'
                # Trainer does), not W&B's own step: a run resumed from a checkpoint older than
                # the last step logged re-logs those steps, which W&B's step (monotonic) would
                # drop.
                self._run.define_metric("step")
                self._run.define_metric("*", step_metric="step")
            except Exception as exc:
                self._fail("start", exc)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if self._run is None:
            return
        try:
            self._run.log({"step": step, **_scalars(metrics)})
        except Exception as exc:
            self._fail("logging", exc)

    def state_dict(self) -> dict:
        return {"wandb_run_id": self._run_id} if self._run_id is not None else {}


class TrackioLogger(TrackerLogger):
    """A Trackio run (a local SQLite database under TRACKIO_DIR); resumes the run by name."""

    label = "Trackio"

    def __init__(self, cfg: TrackioConfig, run_config: dict, run_name: str | None = None):
        super().__init__()
        self._run_name = run_name  # kept when Trackio fails, as W&B's run id is
        try:
            import trackio

            name = run_name or cfg.name
            self._run = trackio.init(
                project=cfg.project,
                name=name,
                config=run_config,
                resume="allow" if run_name else "never",
            )
            self._run_name = self._run.name
        except Exception as exc:
            self._fail("start", exc)

    def _finish(self, run) -> None:
        # trackio.finish(), not run.finish(): it also clears Trackio's "current run", which
        # Trackio otherwise finishes a second time at interpreter exit.
        import trackio

        try:
            trackio.finish()
        except RuntimeError:  # no current run in this context: finish ours directly
            run.finish()

    def state_dict(self) -> dict:
        return {"trackio_run_name": self._run_name} if self._run_name is not None else {}


def build_trackers(cfg: TrainingConfig, saved: dict | None = None) -> list[Logger]:
    """The trackers runtime.logging asks for (call on rank 0 only); ``saved`` is the checkpoint's
    tracker state (run ids) when resuming."""
    saved = saved or {}
    logging_cfg = cfg.runtime.logging
    run_config = cfg.model_dump(mode="json")
    trackers: list[Logger] = []
    if logging_cfg.wandb is not None:
        trackers.append(WandbLogger(logging_cfg.wandb, run_config, saved.get("wandb_run_id")))
    if logging_cfg.trackio is not None:
        trackers.append(
            TrackioLogger(logging_cfg.trackio, run_config, saved.get("trackio_run_name"))
        )
    return trackers
