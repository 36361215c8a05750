"""How an `lmstream` process ends: Python's own shutdown work, then an immediate exit that skips
the interpreter's finalization.

Two reasons, both measured here:

* Finalization tears down every module and object one by one; with torch, datasets and pyarrow
  loaded that is about a second of every command (1.2 s here on two cores), after the work is
  done and saved.
* During finalization CPython stops any thread that tries to take the GIL again. A thread inside
  a C++ frame that released the GIL (torch's process-group threads, a native library's pool, a
  tensor operation on a daemon thread) is then unwound through a ``noexcept`` destructor and the
  C++ runtime aborts the process ("terminate called without an active exception", SIGABRT).
  DDP keeps its process group, and so the backend's threads, alive past
  ``destroy_process_group``; the abort ended a two-rank job that had trained to its end, so
  torchrun reported a finished job as failed (a scheduler may then restart it).

What normal shutdown does that matters is done first, in the same order: join non-daemon
threads, run ``atexit`` handlers (trackers, logging, multiprocessing's cleanup), collect garbage,
then flush every open writable file (one still referenced would otherwise lose its buffer) and
stdout/stderr. Only the teardown, which a process about to end does not need, is skipped.
"""

from __future__ import annotations

import _io
import atexit
import contextlib
import gc
import os
import sys
import threading
from typing import NoReturn


def to_devnull(stream) -> None:
    """Point ``stream``'s file descriptor at /dev/null: its reader has gone (a closed pipe), and
    what it still buffers, and later writes, are dropped instead of raising BrokenPipeError."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, stream.fileno())
    os.close(devnull)


def say(text: str) -> None:
    """``text`` on stderr, never raising: stderr whose reader has gone goes to /dev/null (a
    notice from a signal handler or a clean-up must not end the run it describes)."""
    try:
        print(text, file=sys.stderr, flush=True)
    except OSError:
        with contextlib.suppress(Exception):
            to_devnull(sys.stderr)


def exit_without_finalizing(code: int) -> NoReturn:
    """End the process with ``code`` after Python's shutdown work (module docstring)."""
    # threading._shutdown is what the interpreter itself calls first on exit: it runs the
    # threading atexit hooks (a ThreadPoolExecutor's workers are told to stop) and joins every
    # non-daemon thread. Present on every CPython this project supports; guarded all the same.
    shutdown = getattr(threading, "_shutdown", None)
    if shutdown is not None:
        try:
            shutdown()
        except KeyboardInterrupt:
            # Ctrl-C while a thread is waited for: the user wants out, and the exception must
            # not escape into the interpreter's finalization (a traceback, then exit 1).
            say("lmstream: interrupted while waiting for threads to finish at exit")
            code = 130
    atexit._run_exitfuncs()
    gc.collect()  # unreachable objects' finalizers run (an unclosed file closes, and flushes)
    # What existed when start-up ended is frozen (lmstream.collector), and gc.get_objects() leaves
    # frozen objects out: a file opened then would not be flushed. Unfreezing searches nothing.
    gc.unfreeze()
    for obj in gc.get_objects():
        # By exact type, not isinstance: isinstance reads a non-match's __class__, and some
        # objects warn when touched (torch.distributed.reduce_op printed a FutureWarning on
        # every command's stderr). _io._IOBase is the C base of every io object, io.IOBase's too.
        if issubclass(type(obj), _io._IOBase):
            with contextlib.suppress(Exception):
                if not obj.closed and obj.writable():
                    obj.flush()
    # As CPython's own exit does (flush_std_files): output that cannot be written now (a full
    # disk, a closed pipe) is lost, so say so on stderr and exit 120, never the command's 0.
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None and not stream.closed:
                stream.flush()
        except Exception as err:
            code = 120
            with contextlib.suppress(Exception):
                message = f"Exception ignored in: {stream!r}\n{type(err).__name__}: {err}\n"
                os.write(2, message.encode(errors="replace"))
    os._exit(code)
