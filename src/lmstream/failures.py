"""The one place that tells failures apart and turns them into the one-line messages users see.

Library code raises :class:`lmstream.errors.LmstreamError` for problems a user can fix. Some
failures arrive instead as other libraries' exceptions, recognisable only by their type name or
text: a DataLoader worker that died (torch raises it from its SIGCHLD handler, so it can surface
at any line of the main process), a collective whose peer went away (gloo/NCCL), a disk that
filled up mid-write (OSError, safetensors, torch's zip writer), a flaky network read (aiohttp,
requests, httpx, fsspec). Each such rule lives here, once; :func:`translate` is what the CLI
and the train command call at their boundary (docs/ARCHITECTURE.md, "Failures").
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import datetime
import os
import re
import signal
import socket
from pathlib import Path

from lmstream.errors import LmstreamError


def first_line(exc: BaseException) -> str:
    """The first line of an exception's text (its type name when it has none)."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def translate(err: BaseException, *, distributed: bool = False) -> LmstreamError | None:
    """The one-line error a user should see for ``err``, or None when it is a bug (which keeps
    its traceback). ``distributed``: a collective that failed is then a peer's failure."""
    if isinstance(err, LmstreamError):
        return err
    failure = worker_failure(err)
    if failure is not None:
        return failure
    if distributed and is_peer_failure(err):
        return peer_failure_error(err)
    return None


def on_rank(err: Exception, env) -> Exception:
    """The same error with "rank N: " before each line when several ranks run, so the message
    that torchrun's interleaved output shows says which rank failed."""
    if not env.is_distributed:
        return err
    lines = str(err).splitlines() or [type(err).__name__]
    tagged = copy.copy(err)
    tagged.args = ("\n".join(f"rank {env.rank}: {line}" for line in lines),)
    return tagged


# ------------------------------------------------------------------------- data loader workers
# torch's messages: "DataLoader worker (pid 7) is killed by signal: Killed.", "... (pid 7)
# exited unexpectedly with exit code 1. ...", "DataLoader worker (pid(s) 7, 8) exited ...".
_TORCH_WORKER_FAILURE = re.compile(r"DataLoader worker \(pid(?:\(s\))? ([\d, ]+)\) ([^.]*)")
_RESUME_HINT = "the last checkpoint is intact; resume with --resume"


def worker_failure(err: BaseException) -> LmstreamError | None:
    """The one-line error for torch's "DataLoader worker ... killed/exited" RuntimeError, or None."""
    match = _TORCH_WORKER_FAILURE.search(str(err)) if isinstance(err, RuntimeError) else None
    if match is None:
        return None
    pids, how = match.group(1).strip(), match.group(2).strip()
    name = how.removeprefix("is killed by signal: ")
    if name != how:  # torch names the signal by strsignal(); say its number and name too
        sig = next((s for s in signal.Signals if signal.strsignal(s) == name), None)
        how = f"killed by signal {int(sig)}, {sig.name}" if sig else f"killed by signal: {name}"
        if sig == signal.SIGKILL:
            how += ", often the out-of-memory killer: each worker holds a shuffle window"
    plural = "s" if "," in pids else ""
    return LmstreamError(f"a data loader worker (pid{plural} {pids}) died ({how}); {_RESUME_HINT}")


def loader_failure(err: Exception, num_workers: int) -> LmstreamError | None:
    """The one-line error for a failure met while fetching from the DataLoader, or None."""
    if isinstance(err, LmstreamError):
        # Re-raised from a worker, its text is "Caught X in DataLoader worker ...\nTraceback...";
        # the last line holds the original message.
        lines = [line for line in str(err).strip().splitlines() if line.strip()]
        last = lines[-1] if lines else type(err).__name__
        prefix = f"{type(err).__module__}.{type(err).__name__}: "
        return type(err)(last.removeprefix(prefix))
    failure = worker_failure(err)
    if failure is not None:
        return failure
    # A worker killed while handing over a batch breaks the shared-memory connection instead.
    if num_workers > 0 and isinstance(err, ConnectionError | EOFError):
        return LmstreamError(
            f"a data loader worker died (its connection broke: {first_line(err)}); check memory "
            f"(each worker holds a shuffle window); {_RESUME_HINT}"
        )
    return None


# ---------------------------------------------------------------------------- collectives
# What gloo and NCCL say when the peer at the other end of a collective has gone away.
_PEER_FAILURE_MARKS = ("Connection reset by peer", "Connection closed by peer", "NCCL", "gloo")
_PEER_KEY = "lmstream/peer/{}"  # "host pid" of each rank, in the process group's store


def is_peer_failure(err: BaseException) -> bool:
    """Whether ``err`` is a collective that failed (typically because another rank died)."""
    import torch.distributed as dist

    dist_error = getattr(dist, "DistError", None)
    if dist_error is not None and isinstance(err, dist_error):
        return True
    return isinstance(err, RuntimeError) and any(m in str(err) for m in _PEER_FAILURE_MARKS)


def peer_failure_error(err: BaseException) -> LmstreamError:
    """One line for a failed collective instead of a traceback from inside the backend, naming
    the peer that ended when it can be told (so a rank does not blame itself or its loader)."""
    first = re.sub(r"^\[[^\]]*\]\s*", "", first_line(err)).split(". ")[0]  # no C++ location
    gone = _ended_peers()
    cause = f"{', '.join(gone)} ended" if gone else "most likely another rank stopped"
    return LmstreamError(
        f"{cause} (its own error, if any, is above), so a collective operation failed "
        f"({first}); torchrun ends the job. Fix that cause and resume from the last checkpoint "
        "with --resume"
    )


def register_peer(rank: int) -> None:
    """Publish this rank's host and pid, so that a surviving rank can name a peer that died."""
    import torch.distributed as dist

    with contextlib.suppress(Exception):  # naming a dead peer is a courtesy, never a failure
        store = dist.distributed_c10d._get_default_store()
        store.set(_PEER_KEY.format(rank), f"{socket.gethostname()} {os.getpid()}")


def _ended_peers() -> list[str]:
    """ "rank R (pid P)" for each peer on this host whose process has ended (a peer on another
    host cannot be told from here: torchrun's summary names it)."""
    import torch.distributed as dist

    try:
        store = dist.distributed_c10d._get_default_store()
        store.set_timeout(datetime.timedelta(seconds=5))  # this rank is failing: never hang here
        me, world = dist.get_rank(), dist.get_world_size()
        found = []
        for rank in range(world):
            key = _PEER_KEY.format(rank)
            if rank == me or not store.check([key]):
                continue
            host, pid = store.get(key).decode().rsplit(" ", 1)
            if host == socket.gethostname() and not _alive(int(pid)):
                found.append(f"rank {rank} (pid {pid})")
        return found
    except Exception:
        return []


def _alive(pid: int) -> bool:
    if not Path("/proc/self/stat").exists():  # not Linux: cannot tell, assume alive
        return True
    try:  # a killed peer stays a zombie ("Z") until torchrun reaps it
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in "ZX"
    except (OSError, IndexError):
        return False


# ------------------------------------------------------------------------------- writes
def is_write_failure(exc: BaseException) -> bool:
    """A failed write (disk full, file size limit, I/O error), as raised by open/write (OSError),
    safetensors (SafetensorError "I/O error") or torch.save (RuntimeError from its zip writer)."""
    if isinstance(exc, OSError):
        return True
    text = str(exc)
    return type(exc).__name__ == "SafetensorError" or (
        isinstance(exc, RuntimeError) and ("PytorchStreamWriter" in text or "os error" in text)
    )


# ------------------------------------------------------------------------------ network reads
_TRANSIENT_STATUS = {408, 425, 429, 500, 502, 503, 504}
# Transient errors of the HTTP clients under datasets and fsspec (aiohttp, requests, httpx,
# http.client), told by name: none of them needs to be installed for the others to work.
_TRANSIENT_NAMES = {
    "ClientPayloadError",
    "ServerDisconnectedError",
    "ClientConnectionError",
    "ClientOSError",
    "ServerTimeoutError",
    "FSTimeoutError",
    "ContentLengthError",
    "TransferEncodingError",
    "ChunkedEncodingError",
    "IncompleteRead",
    "RemoteProtocolError",
    "ReadTimeout",
    "ConnectTimeout",
}


def is_transient(err: BaseException) -> bool:
    """Connection resets, timeouts, HTTP 408/429/5xx and truncated bodies, anywhere in the chain."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, ConnectionError | TimeoutError | asyncio.TimeoutError):
            return True
        status = getattr(err, "status", None) or getattr(
            getattr(err, "response", None), "status_code", None
        )
        if isinstance(status, int) and status in _TRANSIENT_STATUS:
            return True
        if type(err).__name__ in _TRANSIENT_NAMES:
            return True
        err = err.__cause__ or err.__context__
    return False
