"""Graceful stop on SIGTERM/SIGINT: the first signal asks the loop to checkpoint and exit at the
next optimizer-step boundary; a second one exits at once (a pod being stopped gets SIGTERM, then
SIGKILL after a grace period; a user pressing Ctrl-C twice means "now")."""

from __future__ import annotations

import os
import signal
import sys
import threading
from types import FrameType


class StopRequest:
    """Installs the handlers on enter, restores the previous ones on exit."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:
            print(
                f"\nlmstream train: second {signal.Signals(signum).name}, exiting now without a checkpoint",
                file=sys.stderr,
                flush=True,
            )
            os._exit(128 + signum)
        self.signum = signum
        print(
            f"\nlmstream train: {signal.Signals(signum).name} received; saving a checkpoint at the end "
            "of this step, then exiting (send it again to exit at once)",
            file=sys.stderr,
            flush=True,
        )

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
