"""Removing checkpoint folders without surprises: a symlinked folder is unlinked (its target,
e.g. on another disk, is kept), and a temporary folder is touched only when the process that
named it (its ``-PID`` suffix) is this one or no longer runs."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

log = logging.getLogger(__name__)


def remove_folder(path: Path) -> None:
    """Delete a checkpoint folder; a symlinked one (moved to another disk and linked back) is
    unlinked, its target left in place (rmtree refuses symlinks with a raw OSError)."""
    if path.is_symlink():
        log.warning("%s is a symbolic link: removed the link, its target %s is kept", path,
                    os.readlink(path))  # fmt: skip
        path.unlink()
    else:
        shutil.rmtree(path)


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
