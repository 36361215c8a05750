"""The training loader's DataLoader worker processes: how they start and how they are stopped.

A worker starts at a lower scheduling priority when training runs on the CPU, with one
tokenizer thread, ignoring the stop signals that are its rank's to handle; a closing loader
stops its workers at once, killing one still busy in a fetch after a short grace. Used by
:class:`lmstream.data.loader.TrainLoader`.
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import threading
from typing import Any

# How much lower a data worker's scheduling priority is than training's when training runs on the
# CPU: the step's OpenMP threads fill every core, and a worker's tokenizing burst that takes one
# of them from a thread holds up the whole parallel region (issue #16: the 2-core CPU pair). Niced
# workers run in the gaps between regions; they need a few percent of a core. +5 is enough for a
# waking OpenMP thread to preempt a worker at once; more would starve workers on a machine that
# other jobs load (weight 335 against 1024 at +5, 110 at +10).
CPU_WORKER_NICE = 5


def init_worker(nice: int, _worker_id: int) -> None:
    """A DataLoader worker's start (``worker_init_fn``): ``nice`` lowers its priority."""
    # One tokenizer thread per worker process (docs/ARCHITECTURE.md, decision 7): the workers are the
    # parallelism; a Rayon pool in each would oversubscribe the cores.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    # Forked while the rank's collector may still be paused for start-up (lmstream.collector):
    # a worker reads for the whole run, and its cyclic garbage must be collected.
    gc.enable()
    if nice:
        # A platform or sandbox that refuses it leaves the worker at its rank's priority, which
        # only costs speed on a CPU shared with the compute threads.
        with contextlib.suppress(OSError):
            os.nice(nice)
    # A stop signal is the rank's to handle: torchrun (and a terminal's Ctrl-C) signal the rank's
    # whole process group, and a worker dying of it first made the rank fail with "a data loader
    # worker died" instead of saving its checkpoint (issue #19). The rank shuts its workers
    # down (TrainLoader.close), by SIGKILL if they do not exit at once.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)


def stop_workers(it: Any) -> None:
    """Stop the workers now (an error's traceback would otherwise keep them alive)."""
    shutdown = getattr(it, "_shutdown_workers", None)
    if shutdown is None:
        return
    if getattr(it, "_worker_pids_set", False):
        # Forget the workers' pids *before* joining them: torch's SIGCHLD handler re-checks
        # every registered pid at each child exit and would raise again, mid-shutdown, for a
        # worker that died earlier (torch removes them only after the joins).
        from torch.utils.data._utils import signal_handling

        signal_handling._remove_worker_pids(id(it))
        it._worker_pids_set = False
    # A worker busy in a fetch (a source retrying) would hold torch's shutdown 5 s per worker
    # and then ignore its SIGTERM: past a short grace, kill it (its half-read batch is not ours).
    workers = list(getattr(it, "_workers", ()))
    killer = threading.Timer(_WORKER_EXIT_S, _kill_workers, (workers,))
    killer.start()
    try:
        shutdown()
    finally:
        killer.cancel()
        _kill_workers(workers)


_WORKER_EXIT_S = 1.0  # how long a closing loader waits for its workers to exit by themselves


def _kill_workers(workers: list) -> None:
    for w in workers:
        if w.is_alive():
            w.kill()
    for w in workers:
        w.join(timeout=_WORKER_EXIT_S)
