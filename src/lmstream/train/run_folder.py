"""The run folder keeps its history: one training process at a time, and nothing deleted when a
run is rolled back, restarted or overwritten.

- **Lock**: ``RUN/train.lock`` holds an exclusive ``flock`` for the life of the process and
  says who holds it (pid, host, start time). The kernel drops the lock when the process dies,
  so a lock left by a killed run is stale by construction and is taken over (said in one line).
  Forked children (DataLoader workers) close their copy of the lock's file: the lock belongs
  to the open file, so a worker outliving a killed trainer would otherwise keep it held.
  Two processes on one run folder would delete each other's temporary checkpoint folders and
  interleave metrics.jsonl (issue #19, item 2).
- **Abandoned state**: what a rollback, ``--restart`` or ``orchestrate --overwrite`` leaves
  behind (checkpoints, best copies, metrics lines, TensorBoard events) is moved into
  ``RUN/abandoned/<UTC time>/`` and reported, never deleted.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import shutil
import socket
import time
from pathlib import Path

from lmstream.errors import CheckpointError, LmstreamError
from lmstream.train import checkpoint as ckpt

log = logging.getLogger(__name__)

LOCK_FILE = "train.lock"
ABANDONED_DIR = "abandoned"


class RunFolderError(LmstreamError):
    """The run folder is in use, or holds state that a fresh start would overwrite."""

    exit_code = 6


def _describe(holder: dict) -> str:
    since = holder.get("started")
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(since)) if since else "?"
    return f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}, since {when}"


_HELD: set[int] = set()  # this process's lock files, closed in its forked children


def _close_in_child() -> None:
    for fd in _HELD:
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD.clear()


os.register_at_fork(after_in_child=_close_in_child)


class RunLock:
    """An exclusive lock on a run folder (see the module docstring)."""

    def __init__(self, run_dir: str | os.PathLike):
        self.path = Path(run_dir) / LOCK_FILE
        self._fd: int | None = None
        self._owner = os.getpid()  # a forked child has no lock to release
        self.took_over: str | None = None  # the stale holder replaced, for the run's log

    def acquire(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = self._lock_file()
            # The holder unlinks the file before it unlocks: a lock won on a file that is no
            # longer at the path (opened just before that unlink) is worthless; try again.
            try:
                if os.fstat(fd).st_ino == os.stat(self.path).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        previous = _read(self.path)
        if previous.get("pid") is not None:  # its process died without releasing: stale
            self.took_over = _describe(previous)
        record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        self._fd, self._owner = fd, os.getpid()
        _HELD.add(fd)
        return self

    def _lock_file(self) -> int:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise RunFolderError(
                    f"{self.path}: cannot lock the run folder ({exc.strerror}); put the run "
                    "folder on a filesystem that supports file locks"
                ) from None
            raise RunFolderError(
                f"{self.path.parent} is in use by another lmstream process "
                f"({_describe(_read(self.path))}); wait for it to end or stop it: two "
                "processes on one run folder overwrite each other's checkpoints and metrics"
            ) from None
        return fd

    def release(self) -> None:
        """Remove the file, then drop the lock (in that order: see :meth:`acquire`)."""
        if self._fd is None or self._owner != os.getpid():
            return
        with contextlib.suppress(OSError):
            self.path.unlink()
        _HELD.discard(self._fd)
        os.close(self._fd)  # closing drops the flock
        self._fd = None


def _read(path: Path) -> dict:
    try:
        data = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def check_unlocked(run_dir: str | os.PathLike) -> None:
    """Raise RunFolderError if a process holds the run folder (for commands that rewrite it)."""
    if (Path(run_dir) / LOCK_FILE).exists():
        RunLock(run_dir).acquire().release()


def lock_run_folder(run_dir: str | os.PathLike, env) -> RunLock | None:
    """Rank 0 locks the run folder for the whole job (the other ranks write nothing there
    but their sharded checkpoint files, which rank 0 coordinates); every rank raises if it is
    taken. Returns rank 0's lock (None on other ranks)."""
    from lmstream import distributed as dist

    lock = RunLock(run_dir)
    # Rank 0 takes the lock; every rank gets its RunFolderError (none waits in a collective).
    dist.on_main(env.is_main, lambda: lock.acquire() and None, (RunFolderError,))
    if env.is_main and lock.took_over:
        log.warning("took over the run folder's lock from %s, which ended without releasing it",
                    lock.took_over)  # fmt: skip
    return lock if env.is_main else None


def start_fresh(cfg, run_dir: Path, env, restart: bool) -> list[str]:
    """:func:`fresh_start` on rank 0, its outcome on every rank."""
    from lmstream import distributed as dist

    lines = dist.on_main(
        env.is_main, lambda: fresh_start(cfg, Path(run_dir), restart), (RunFolderError,)
    )
    dist.barrier()
    return lines


# ------------------------------------------------------------------------- abandoned state


def new_abandoned_dir(run_dir: str | os.PathLike) -> Path:
    """A fresh ``RUN/abandoned/<UTC time>/`` (suffixed if that second is taken)."""
    base = Path(run_dir) / ABANDONED_DIR / time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    folder, n = base, 1
    while folder.exists():
        n += 1
        folder = base.with_name(f"{base.name}-{n}")
    folder.mkdir(parents=True)
    return folder


def move_into(path: Path, folder: Path, name: str | None = None) -> Path:
    """Move ``path`` (a file, folder or symlink) into ``folder``: a rename on one filesystem, a
    copy then removal across filesystems (shutil.move)."""
    target = folder / (name or path.name)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(path), str(target))
    return target


def _step_folders(directory: Path | None) -> list[Path]:
    return ckpt.list_checkpoints(directory) if directory is not None else []


def run_state(cfg, run_dir: Path) -> dict[str, list[Path]]:
    """What a training run left in its folders: step folders (checkpoints, best), metrics and
    TensorBoard logs. Keys with nothing are left out."""
    rt = cfg.runtime
    found = {
        "checkpoints": _step_folders(rt.checkpoint.directory),
        "best": _step_folders(rt.evaluation.best.directory),
        "metrics": [p for p in [rt.logging.metrics_jsonl] if p and Path(p).is_file()],
        "tensorboard": [
            p for p in [rt.logging.tensorboard] if p and Path(p).is_dir() and any(Path(p).iterdir())
        ],
    }
    return {k: [Path(p) for p in v] for k, v in found.items() if v}


def abandon_run_state(cfg, run_dir: Path) -> tuple[Path, list[str]] | None:
    """Move everything :func:`run_state` finds into a new abandoned folder; (folder, what)."""
    state = run_state(cfg, run_dir)
    if not state:
        return None
    folder = new_abandoned_dir(run_dir)
    what = []
    for kind, paths in state.items():
        for path in paths:
            move_into(path, folder / kind if kind in ("checkpoints", "best") else folder)
        what.append(f"{len(paths)} {kind}" if kind in ("checkpoints", "best") else kind)
    return folder, what


def fresh_start(cfg, run_dir: Path, restart: bool) -> list[str]:
    """A run that starts at step 0: refuse if the folder holds checkpoints (unless ``restart``),
    move old logs aside. Returns the lines to report."""
    state = run_state(cfg, run_dir)
    saved = [p for p in state.get("checkpoints", []) + state.get("best", [])
             if p in ckpt.complete_checkpoints(p.parent)]  # fmt: skip
    if saved and not restart:
        newest = max(saved, key=lambda p: p.name)
        raise RunFolderError(
            f"{run_dir} already holds checkpoints (newest {newest}); continue with --resume, "
            f"or start over with --restart (moves them, best, metrics and TensorBoard logs into "
            f"{Path(run_dir) / ABANDONED_DIR}/)"
        )
    moved = abandon_run_state(cfg, run_dir)
    if moved is None:
        return []
    folder, what = moved
    return [f"starting at step 0: moved the previous run's {', '.join(what)} into {folder}"]


# ---------------------------------------------------------------------------------- lineage


def lineage(newest: Path) -> list[Path]:
    """``newest`` and the checkpoints it continued from, newest first, following each
    manifest's ``parent`` within its folder. A manifest without the key (written before it
    existed) continues from the next lower complete step; ``parent`` null or elsewhere ends it."""
    chain, path = [], Path(newest)
    while path is not None and path not in chain:
        chain.append(path)
        try:
            manifest = ckpt.read_manifest(path)
        except CheckpointError:
            break
        if "parent" not in manifest:
            older = [p for p in ckpt.complete_checkpoints(path.parent) if p.name < path.name]
            path = older[-1] if older else None
        elif isinstance(manifest["parent"], str) and "/" not in manifest["parent"]:
            parent = path.parent / manifest["parent"]
            path = parent if parent in ckpt.complete_checkpoints(path.parent) else None
        else:
            path = None
    return chain


def rotate_lineage(newest: Path, max_keep: int | None) -> list[Path]:
    """Training's rotation: ``newest`` (just written) and its ``max_keep - 1`` newest ancestors
    stay; older ancestors are deleted; checkpoints of another lineage are not touched (a
    rolled-back run must not rotate its new checkpoints away for the old branch's higher step
    numbers). Returns what was deleted."""
    if max_keep is None:
        return []
    doomed = lineage(newest)[max_keep:]
    for path in doomed:
        ckpt.remove_folder(path)
    return doomed


# --------------------------------------------------------------------------------- rollback


def newer_checkpoints(directory: Path, step: int) -> list[Path]:
    """Step folders (complete or not) in ``directory`` beyond ``step``, oldest first."""
    return [p for p in _step_folders(directory) if _step(p) > step]


def _step(path: Path) -> int:
    return int(path.name.split("-")[1])


def check_rollback(cfg, resumed: Path, rollback: bool) -> None:
    """Refuse to resume from an older checkpoint of this run's folder while newer complete ones
    exist, unless ``rollback`` (they would be moved aside; a typo should not do that)."""
    directory = Path(cfg.runtime.checkpoint.directory)
    complete = set(ckpt.complete_checkpoints(directory))
    newer = [p for p in newer_checkpoints(directory, _step(resumed)) if p in complete]
    if newer and not rollback:
        names = ", ".join(p.name for p in newer)
        raise RunFolderError(
            f"cannot resume from {resumed}: newer checkpoints exist ({names}); pass --rollback "
            "to continue from it anyway (the newer checkpoints, their best copies and the "
            "metrics after it move into RUN/abandoned/), or --resume without a path for the newest"
        )


def roll_back(cfg, run_dir: Path, step: int) -> str | None:
    """Move this run's checkpoints and best copies beyond ``step``, and the metrics lines after
    it, into a new abandoned folder (TensorBoard events are copied there; the live folder hides
    them with purge_step). Returns the line to report, or None if there was nothing newer."""
    rt = cfg.runtime
    checkpoints = newer_checkpoints(Path(rt.checkpoint.directory), step)
    best = newer_checkpoints(Path(rt.evaluation.best.directory), step)
    if not checkpoints and not best:
        return None
    folder = new_abandoned_dir(run_dir)
    for path in checkpoints:
        move_into(path, folder / "checkpoints")
    for path in best:
        move_into(path, folder / "best")
    lines = 0
    if rt.logging.metrics_jsonl is not None and Path(rt.logging.metrics_jsonl).is_file():
        lines = split_metrics(Path(rt.logging.metrics_jsonl), step, folder / "metrics.jsonl")
    tb = rt.logging.tensorboard
    if tb is not None and Path(tb).is_dir():
        shutil.copytree(tb, folder / "tensorboard", symlinks=True)
    parts = [f"checkpoints {', '.join(p.name for p in checkpoints) or 'none'}"]
    if best:
        parts.append(f"best {', '.join(p.name for p in best)}")
    parts.append(f"{lines} metrics lines")
    return f"rolled back to step {step}: moved {'; '.join(parts)} into {folder}"


def split_metrics(path: Path, step: int, dropped_to: Path) -> int:
    """Keep the lines of ``path`` up to ``step``; write the others to ``dropped_to``."""
    kept, dropped = [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record_step = int(json.loads(line).get("step", 0))
        except (ValueError, AttributeError, TypeError):
            record_step = step + 1  # a torn last line: not the resumed run's, keep it aside
        (kept if record_step <= step else dropped).append(line + "\n")
    if dropped:
        dropped_to.parent.mkdir(parents=True, exist_ok=True)
        dropped_to.write_text("".join(dropped), encoding="utf-8")
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text("".join(kept), encoding="utf-8")
        os.replace(tmp, path)
    return len(dropped)


def abandon_experiment(
    run_dir: Path, tokenizer_dir: Path, token_dir: Path | None = None
) -> str | None:
    """``orchestrate --overwrite``: move an experiment's previous files (its run's checkpoints,
    best copies, metrics and logs wherever training.yaml put them, then everything else in the
    run folder, then the tokenizer files and any pre-tokenized shards in ``token_dir``) into a
    new abandoned folder, so the new tokenizer and config files start clean and nothing is
    deleted. Returns the line to report."""
    from lmstream.config import load_training_config
    from lmstream.errors import ConfigError

    check_unlocked(run_dir)
    entries: list[tuple[Path, str]] = []
    yaml_path = run_dir / "training.yaml"
    if yaml_path.is_file():
        with contextlib.suppress(ConfigError, OSError):  # unreadable: its defaults are below
            cfg = load_training_config(yaml_path)
            for kind, paths in run_state(cfg, run_dir).items():
                sub = kind if kind in ("checkpoints", "best") else ""
                entries += [(p, sub) for p in paths if Path(run_dir) not in p.parents]
    if run_dir.is_dir():
        entries += [(p, "") for p in sorted(run_dir.iterdir())
                    if p.name not in (ABANDONED_DIR, LOCK_FILE)]  # fmt: skip
    if tokenizer_dir.is_dir():
        entries += [(p, "tokenizer") for p in sorted(tokenizer_dir.iterdir())]
    if token_dir is not None and token_dir.is_dir():
        entries += [(p, "tokens") for p in sorted(token_dir.iterdir())]
    if not entries:
        return None
    folder = new_abandoned_dir(run_dir)
    for path, sub in entries:
        if path.exists() or path.is_symlink():
            move_into(path, folder / sub if sub else folder)
    names = ", ".join(sorted({(f"{sub}/" if sub else "") + p.name for p, sub in entries}))
    return f"--overwrite: moved the previous files ({names}) into {folder}; nothing was deleted"
