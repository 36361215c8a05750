"""Python's cyclic garbage collector, paused while a command starts and frozen once it has.

Why: starting ``lmstream train`` imports torch, datasets, pandas and pyarrow and builds the run:
some 600,000 objects that live as long as the process. The collector walked them again each
time a quarter more had appeared, six full passes that found no garbage worth the name and took
0.9 s of a small CPU run's start-up (bench/bench_cpu_small.py's run, 2 cores).

So the process's entry point pauses the collector before anything is imported, and start-up
ends in two steps:

- ``imports_done`` moves everything the imports made into the permanent generation
  (``gc.freeze``), which collections skip, without looking for garbage: what imports leave
  unreachable (a few thousand functions, tuples and type aliases) is small, bounded by the code
  loaded, and the search would cost 0.4 s;
- ``start_up_done`` collects what was made since (the run's build: a replaced model, a caught
  error's frames, anything that may hold tensors), freezes the survivors and turns the
  collector back on for the command's own work.

Children forked meanwhile (DataLoader workers) inherit a paused collector and turn it on at
their start (``data.worker_processes.init_worker``); the frozen objects they inherit are never
walked, so their pages stay shared with the parent. Only a process whose entry point called
``pause`` is touched: a library caller's collector (tests calling ``train()``) is left alone.
"""

from __future__ import annotations

import gc

_paused = False


def pause() -> None:
    """Turn the collector off for start-up (the process's entry point calls this first)."""
    global _paused
    if gc.isenabled():
        gc.disable()
        _paused = True


def imports_done() -> None:
    """Freeze what exists now without searching it for garbage (see the module's note)."""
    if _paused:
        gc.freeze()


def start_up_done() -> None:
    """Start-up is over: collect what is not frozen, freeze the survivors, collector on again.
    A no-op unless ``pause`` turned it off, so every point where start-up may end can call it."""
    global _paused
    if not _paused:
        return
    _paused = False
    gc.collect()
    gc.freeze()
    gc.enable()
