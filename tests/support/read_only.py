"""A folder made read-only for real, for tests of what a command does when it cannot write
there (a shared or mounted checkpoint, a run folder on a read-only volume)."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def read_only(folder: Path) -> Iterator[None]:
    """``folder`` read-only while the block runs: its mode for a normal user; a read-only bind
    mount for root (whom modes do not stop), skipping the test where mounting is not allowed."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            yield
        finally:
            folder.chmod(0o755)
        return
    mount = subprocess.run(["mount", "--bind", str(folder), str(folder)], capture_output=True)
    if mount.returncode != 0:
        pytest.skip(f"running as root and cannot bind-mount: {mount.stderr.decode().strip()}")
    try:
        remount = ["mount", "-o", "remount,bind,ro", str(folder)]
        if subprocess.run(remount, capture_output=True).returncode != 0:
            pytest.skip("running as root and cannot remount read-only")
        yield
    finally:
        subprocess.run(["umount", str(folder)], check=True)
