"""Checkpoint writes in a background thread, so training continues while gigabytes reach disk.

A 1B model's checkpoint (fp32 weights + AdamW state) is ~13 GB; written synchronously, an
evaluation + checkpoint (+ best copy) stopped an H200 for ~50 s (BENCHMARKS.md, gpu_loop). The
loop now takes a *snapshot* on the
training thread (host copies of every tensor: the only part that must see a consistent state)
and hands the write, rotation and best-checkpoint bookkeeping to one writer thread. The write is
the same atomic one (temporary folder, fsync, manifest last, rename), so a crash mid-write still
leaves only complete checkpoints; what a background write adds is a window in which the newest
checkpoint is not yet on disk, bounded by one write.

Rules that keep this safe:
- one job at a time, in order: a new job first waits for the previous one (so rotation, best
  pruning and temporary-folder cleanup never race);
- a failed write is raised on the training thread at the next :meth:`poll` (each step) or
  :meth:`wait`, with the same one-line CheckpointError as a synchronous save;
- the run waits for the last job before it ends (normally, on a stop signal, or on an error).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import torch

Job = Callable[[], list[str]]  # does the work; returns messages for the run's log


def snapshot(state, *, clone_host_tensors: bool):
    """A deep copy of ``state`` whose tensors are host copies the training thread no longer
    touches. Tensors already on the host are cloned only when ``clone_host_tensors`` (CPU
    training: they are the live parameters and optimizer buffers); device tensors are always
    copied to the host."""
    if isinstance(state, torch.Tensor):
        if state.device.type != "cpu":
            return state.detach().to("cpu")
        return state.detach().clone() if clone_host_tensors else state.detach()
    if isinstance(state, dict):
        return {k: snapshot(v, clone_host_tensors=clone_host_tensors) for k, v in state.items()}
    if isinstance(state, list | tuple):
        items = [snapshot(v, clone_host_tensors=clone_host_tensors) for v in state]
        return type(state)(items) if isinstance(state, list) else tuple(items)
    return copy.deepcopy(state)


class CheckpointWriter:
    """Runs checkpoint jobs one at a time; in the background when ``background``, else inline."""

    def __init__(self, background: bool):
        self._pool = (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="lmstream-checkpoint")
            if background
            else None
        )
        self._pending: Future | None = None

    @property
    def background(self) -> bool:
        return self._pool is not None

    def submit(self, job: Job) -> list[str]:
        """Start ``job`` after the previous one; returns the messages of jobs that finished
        (the previous one's, or this one's when writing inline)."""
        messages = self.wait()
        if self._pool is None:
            return messages + job()
        self._pending = self._pool.submit(job)
        return messages

    def poll(self) -> list[str]:
        """Messages of a job that has finished since the last call; raises its error."""
        if self._pending is None or not self._pending.done():
            return []
        return self.wait()

    def wait(self) -> list[str]:
        """Block until no job is running; its messages, or its exception raised here."""
        pending, self._pending = self._pending, None
        return pending.result() if pending is not None else []

    def close(self) -> list[str]:
        try:
            return self.wait()
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
