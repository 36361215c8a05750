"""Removing checkpoint folders without surprises: a folder vanishes at once (renamed to a
temporary, then deleted), a symlinked folder is unlinked (its target, e.g. on another disk, is
kept), and a temporary folder is touched only when the process that named it (its ``-PID``
suffix) is this one or no longer runs."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

log = logging.getLogger(__name__)


def remove_folder(path: Path) -> None:
    """Delete a checkpoint folder; a symlinked one (moved to another disk and linked back) is
    unlinked, its target left in place (rmtree refuses symlinks with a raw OSError).

    The folder is first renamed to ``.tmp-del-NAME-PID``: a kill inside rmtree would otherwise
    leave a step folder with some files gone (e.g. a manifest and no model.safetensors), which
    looks like a damaged checkpoint; a leftover temporary is cleared by the next save."""
    if path.is_symlink():
        log.warning("%s is a symbolic link: removed the link, its target %s is kept", path,
                    os.readlink(path))  # fmt: skip
        path.unlink()
        return
    doomed = path.with_name(f".tmp-del-{path.name}-{os.getpid()}")
    shutil.rmtree(doomed, ignore_errors=True)  # left by an earlier failed delete of ours
    os.rename(path, doomed)
    shutil.rmtree(doomed)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def writer_gone(path: Path) -> bool:
    """Whether the process that named a temporary folder (its ``-PID`` suffix) is this one
    or no longer runs here: only then may its folder be touched."""
    tag = path.name.rsplit("-", 1)[-1]
    return tag.isdigit() and (int(tag) == os.getpid() or not pid_alive(int(tag)))
