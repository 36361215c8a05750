"""SIGKILL at random moments of a real `lmstream train` process, resumed each time.

One run is killed again and again (each `--resume` continues from what the previous kill left):
during start-up, between steps and inside checkpoint writes (while a ``.tmp-step-...`` folder
exists). After every kill, every step folder must verify (sizes and sha256) and `--resume` must
find the newest one; at the end the weights must be bit-identical to the uninterrupted run's.
The default variant kills 10 times; ``-m heavy`` kills 40 times with other random moments.

Each kill fires at its random moment or, at the latest, when the run logs its "ceiling" step:
the steps still ahead are shared among the kills still to land. A start-up kill drawn late (up
to 4 s) would otherwise let a run that started sooner train on at ~25 steps/s, and the run
could end before its 10th kill (a 2-core CI runner once saw 9).
"""

from __future__ import annotations

import itertools
import os
import random
import signal
import time
from pathlib import Path

import pytest
from tests.reliability.support import (
    TOTAL,
    assert_checkpoints_complete,
    assert_same_weights,
    logged_steps,
    start_train,
    tiny_config,
    wait_until,
)
from tests.support.training import train_in_process, write_run

from lmstream.train import checkpoint as ckpt

pytestmark = pytest.mark.slow
KINDS = ("startup", "step", "checkpoint")
EVERY = tiny_config(Path("corpus"))["runtime"]["checkpoint"]["every_n_steps"]


def _temporaries(directory: Path) -> list[str]:
    try:
        return [n for n in os.listdir(directory) if n.startswith(".tmp-")]
    except FileNotFoundError:
        return []


def kill_room(done: int, kills_left: int) -> int:
    """How many steps past ``done`` (the newest step ever logged) the next kill may let the run
    go: an even share of the steps ahead, the last 3 kept back. Even if every kill overshot its
    ceiling by a step (logged between the poll and the signal), every ceiling stays below step
    TOTAL - 1, so the run is always still training when its last kill fires."""
    return max(1, (TOTAL - 3 - done) // kills_left)


def _ceiling(kind: str, done: int, room: int) -> int:
    """The logged step at which a kill of ``kind`` fires if its own moment has not come yet.
    A checkpoint kill waits for the next write (at the next even step, logged before it is
    written), so its ceiling is past that step."""
    next_write = done + EVERY - done % EVERY
    return max(done + room, next_write + 1) if kind == "checkpoint" else done + room


def _kill_once(
    config: Path, run_dir: Path, kind: str, rng: random.Random, first: bool, kills_left: int
) -> dict:
    """Start (or resume) the run, SIGKILL it at a moment of ``kind``; what happened."""
    ckdir = run_dir / "checkpoints"
    done = max(logged_steps(run_dir), default=0)
    room = kill_room(done, kills_left)
    ceiling = _ceiling(kind, done, room)
    proc = start_train(config, *(() if first else ("--resume",)))

    def past(step: int) -> bool:
        return max(logged_steps(run_dir), default=0) >= step

    try:
        if kind == "startup":  # somewhere in imports, data/model setup or the first steps
            deadline = time.monotonic() + rng.uniform(0.2, 4.0)
            wait_until(proc, lambda: time.monotonic() >= deadline or past(ceiling))
        elif kind == "step":
            target = done + rng.randint(1, min(5, room))
            wait_until(proc, lambda: past(target))
        else:
            wait_until(proc, lambda: bool(_temporaries(ckdir)) or past(ceiling))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        out, err = proc.communicate(timeout=60)
    except AssertionError:  # polling timed out: the run itself is broken
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"run neither progressed nor ended:\n{out}\n{err}") from None
    finally:
        if proc.poll() is None:
            proc.kill()
    killed = proc.returncode == -signal.SIGKILL
    assert killed or proc.returncode == 0, f"exit {proc.returncode}:\n{out}\n{err}"
    return {
        "kind": kind,
        "killed": killed,
        "inside_write": killed and bool(_temporaries(ckdir)),
        "step_logged": max(logged_steps(run_dir), default=0),
    }


def kill_and_resume(corpus: Path, reference: Path, run_dir: Path, kills: int, seed: int) -> list:
    config = write_run(run_dir, tiny_config(corpus))
    rng = random.Random(seed)
    events = []
    while len([e for e in events if e["killed"]]) < kills:
        kind = KINDS[len(events) % len(KINDS)] if len(events) < 3 else rng.choice(KINDS)
        left = kills - sum(e["killed"] for e in events)
        event = _kill_once(config, run_dir, kind, rng, first=not events, kills_left=left)
        events.append(event)
        # Whatever the moment, every step folder is complete and resume finds the newest.
        folders = assert_checkpoints_complete(run_dir / "checkpoints")
        if folders:
            newest = ckpt.resolve_checkpoint(run_dir, check_hashes=True)
            assert newest == folders[-1]
        if not event["killed"]:
            break  # the run finished before its kill moment
        assert len(events) < 4 * kills, f"kills do not land: {events}"
    if events[-1]["killed"]:
        assert train_in_process(config, "--resume") == 0
    assert_checkpoints_complete(run_dir / "checkpoints")
    assert_same_weights(run_dir, reference)
    return events


def test_sigkill_at_10_moments_resumes_bit_exact(corpus, reference, tmp_path):
    events = kill_and_resume(corpus, reference, tmp_path / "run", kills=10, seed=1)
    killed = [e for e in events if e["killed"]]
    assert len(killed) >= 10, events
    assert any(e["inside_write"] for e in killed), f"no kill landed inside a write: {events}"
    print(f"\nreliability: sigkill tried={len(killed)} inside_write="
          f"{sum(e['inside_write'] for e in killed)} survived=all")  # fmt: skip


def test_the_kill_plan_leaves_room_for_every_kill():
    """Whatever the kinds drawn, even if every kill overshoots its ceiling by a step (and every
    checkpoint kill lands in the next write), each of the 10 ceilings is below step TOTAL - 1:
    the run is still training when each kill fires."""
    for kinds in itertools.product(("step", "checkpoint"), repeat=10):
        done = 0
        for left, kind in zip(range(10, 0, -1), kinds, strict=True):
            ceiling = _ceiling(kind, done, kill_room(done, left))
            assert ceiling < TOTAL - 1, (kinds, left, done)
            done = done + EVERY - done % EVERY if kind == "checkpoint" else ceiling + 1


@pytest.mark.heavy
@pytest.mark.parametrize("seed", [2, 3, 4, 5])
def test_sigkill_many_moments_heavy(corpus, reference, tmp_path, seed):
    events = kill_and_resume(corpus, reference, tmp_path / "run", kills=10, seed=seed)
    assert sum(e["killed"] for e in events) >= 10
