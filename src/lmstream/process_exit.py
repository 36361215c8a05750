"""How a torchrun rank's process ends: Python's own shutdown work, then an immediate exit that
skips the interpreter's finalization.

At finalization CPython stops any thread that tries to take the GIL again. A thread inside a C++
frame that released the GIL (torch's process-group threads, a native library's thread pool, a
tensor operation on a daemon thread) is then unwound through a ``noexcept`` destructor, and the
C++ runtime aborts the process ("terminate called without an active exception", SIGABRT). For a
rank that has trained to the end and saved everything, torchrun then reports the whole job as
failed, and a scheduler may restart a finished job. DDP keeps its process group (and the
backend's threads) alive past ``destroy_process_group``, so a rank always has such threads at
exit; the abort ended a two-rank job that had trained to its end in CI.

What normal shutdown does that matters is done here first, in the same order: join non-daemon
threads, run ``atexit`` handlers (trackers, logging, multiprocessing's cleanup), collect garbage
(an unreachable file object still flushes its buffer), flush stdout and stderr. Only the module
teardown, which a process about to end does not need, is skipped.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import os
import sys
import threading
from typing import NoReturn


def in_torchrun_rank() -> bool:
    """True in a worker process that torchrun (or another launcher of a multi-rank job) started."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def exit_without_finalizing(code: int) -> NoReturn:
    """End the process with ``code`` after Python's shutdown work (module docstring)."""
    # threading._shutdown is what the interpreter itself calls first on exit: it runs the
    # threading atexit hooks (a ThreadPoolExecutor's workers are told to stop) and joins every
    # non-daemon thread. Present on every CPython this project supports; guarded all the same.
    shutdown = getattr(threading, "_shutdown", None)
    if shutdown is not None:
        shutdown()
    atexit._run_exitfuncs()
    gc.collect()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)
