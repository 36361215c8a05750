"""SIGKILL at random moments of a real `lmstream train` process, resumed each time.

One run is killed again and again (each `--resume` continues from what the previous kill left):
during start-up, between steps and inside checkpoint writes (while a ``.tmp-step-...`` folder
exists). After every kill, every step folder must verify (sizes and sha256) and `--resume` must
find the newest one; at the end the weights must be bit-identical to the uninterrupted run's.
The default variant kills 10 times; ``-m heavy`` kills 40 times with other random moments.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
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


def _temporaries(directory: Path) -> list[str]:
    try:
        return [n for n in os.listdir(directory) if n.startswith(".tmp-")]
    except FileNotFoundError:
        return []


def _kill_once(config: Path, run_dir: Path, kind: str, rng: random.Random, first: bool) -> dict:
    """Start (or resume) the run, SIGKILL it at a moment of ``kind``; what happened."""
    ckdir = run_dir / "checkpoints"
    done = max(logged_steps(run_dir), default=0)
    proc = start_train(config, *(() if first else ("--resume",)))
    try:
        if kind == "startup":  # somewhere in imports, data/model setup or the first steps
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=rng.uniform(0.2, 4.0))
        elif kind == "step":
            target = min(TOTAL - 1, done + rng.randint(1, 5))
            wait_until(proc, lambda: max(logged_steps(run_dir), default=0) >= target)
        else:
            wait_until(proc, lambda: bool(_temporaries(ckdir)))
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
        event = _kill_once(config, run_dir, kind, rng, first=not events)
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


@pytest.mark.heavy
@pytest.mark.parametrize("seed", [2, 3, 4, 5])
def test_sigkill_many_moments_heavy(corpus, reference, tmp_path, seed):
    events = kill_and_resume(corpus, reference, tmp_path / "run", kills=10, seed=seed)
    assert sum(e["killed"] for e in events) >= 10
