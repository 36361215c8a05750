"""Shared test setup: offline Hugging Face libraries, a deterministic CPU, fixtures."""

from __future__ import annotations

import gc
import os
import sys
import threading
from pathlib import Path

import pytest

# No network in tests: the datasets/hub libraries must never try the Hub.
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture
def seed_yaml_text() -> str:
    """The seed's training.yaml, copied verbatim from the seed workflow document users know."""
    return (FIXTURES / "seed_training.yaml").read_text()


def _child_processes() -> list[str]:
    """`pid command` of this process's live children (Linux /proc; empty elsewhere)."""
    out = []
    for task in Path(f"/proc/{os.getpid()}/task").glob("*"):
        children = task / "children"
        for pid in children.read_text().split() if children.exists() else []:
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            out.append(f"{pid} {cmd.strip()[:200]}")
    return out


def _forked_children() -> set[str]:
    """This process's live children that run its own command line: forked, not started as a
    program (DataLoader workers, multiprocessing's fork children); zombies left out."""
    own = Path("/proc/self/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()[:200]
    live = set()
    for child in _child_processes():
        pid, _, cmd = child.partition(" ")
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
        except OSError:
            continue
        if cmd == own and state != "Z":
            live.add(child)
    return live


@pytest.fixture(autouse=True)
def _no_forked_child_left():
    """A test that leaves a forked child running (a DataLoader iterator nobody closed) fails
    here: its workers ignore SIGTERM and outlive the session (the leftover warning below)."""
    before = _forked_children()
    yield
    left = _forked_children() - before
    if left:  # an iterator only unreachable yet: collected, its workers stop
        gc.collect()
        left = _forked_children() - before
    assert not left, f"the test left forked child processes running: {sorted(left)}"


def pytest_sessionfinish(session, exitstatus) -> None:
    """Name what the tests left running: a child process or a non-daemon thread that outlives
    the session is a test (or product) leak, and it is what would keep the run from exiting."""
    session.config.stash[_EXIT_STATUS] = int(exitstatus)
    leftovers = [f"child process {c}" for c in _child_processes()] + [
        f"thread {t.name}"
        for t in threading.enumerate()
        if t is not threading.main_thread() and not t.daemon and t.is_alive()
    ]
    if leftovers:
        print("\nwarning: the test session left running: " + "; ".join(leftovers), file=sys.stderr)


_EXIT_STATUS = pytest.StashKey[int]()


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config) -> None:
    """Exit as soon as pytest has reported, without the exit handlers of the libraries the tests
    imported (wandb, trackio, multiprocessing, lm-eval...): one of them waiting on a thread, a
    child or the network once made CI time out after every test had passed."""
    status = config.stash.get(_EXIT_STATUS, None)
    if status is None or os.environ.get("LMSTREAM_TEST_NORMAL_EXIT"):
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
