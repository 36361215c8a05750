"""Graceful stop on SIGTERM/SIGINT: the first signal asks the loop to checkpoint and exit at the
next optimizer-step boundary; a second one exits at once (a pod being stopped gets SIGTERM, then
SIGKILL after a grace period; a user pressing Ctrl-C twice means "now").

A signal that lands while the loop waits for data (a source retrying with backoff, or stalled
until its read timeout, can hold a fetch for minutes, far beyond a pod's usual 30 s grace)
interrupts the wait: :meth:`StopRequest.interruptible` makes the handler raise :class:`StopFetch`
there, as Ctrl-C raises KeyboardInterrupt, and the loop checkpoints the last finished step.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from types import FrameType

from lmstream.process_exit import say


class StopFetch(BaseException):  # noqa: N818 (a signal, like KeyboardInterrupt, not an error)
    """Raised by the handler inside :meth:`StopRequest.interruptible`. A BaseException, so that
    the data pipeline's ``except Exception`` (retries, error translation) lets it through."""


class StopRequest:
    """Installs the handlers on enter, restores the previous ones on exit."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}
        self._interruptible = False

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:
            say(
                f"\nlmstream train: second {signal.Signals(signum).name}, exiting now without a checkpoint"
            )
            os._exit(128 + signum)
        self.signum = signum
        # Never raising: Ctrl-C on `lmstream train 2>&1 | tee log` ends tee first, and a
        # BrokenPipeError here ended the run without the checkpoint this signal asks for.
        say(
            f"\nlmstream train: {signal.Signals(signum).name} received; saving a checkpoint at the end "
            "of this step (or of the last one when waiting for data), then exiting (send it "
            "again to exit at once)"
        )
        if self._interruptible:
            self._interruptible = False  # raised once: the handlers of the unwinding run plainly
            raise StopFetch

    @contextlib.contextmanager
    def interruptible(self) -> Iterator[None]:
        """A block that a stop signal ends with :class:`StopFetch` (at once if one came before).

        Only for waits whose partial work can be dropped: what the block was doing is abandoned
        mid-way, so the caller must not rely on state the block changes (the loop saves the data
        position taken before the block).
        """
        if self.requested:
            raise StopFetch
        self._interruptible = True
        try:
            yield
        finally:
            self._interruptible = False

    def __enter__(self) -> StopRequest:
        # Signal handlers can only be installed from the main thread (e.g. not under some test runners).
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
