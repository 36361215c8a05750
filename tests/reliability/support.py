"""Helpers of the reliability suite: a tiny training config, real `lmstream train`
subprocesses, polling, and checks against the uninterrupted reference run (conftest.py).

Every run uses one intra-op thread (OMP_NUM_THREADS=1 in subprocesses, torch.set_num_threads(1)
in this process), so CPU fp32 arithmetic is the same in every process and "nothing lost" can be
checked the strict way: the final weights of a faulted run are bit-identical to the reference.
The schedule is constant after warmup, so a run may be resumed with a larger total_steps (an
allowed change) and still be the reference's prefix.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file
from tests.support.training import tiny_training_config

from lmstream.train import checkpoint as ckpt

TOTAL = 40  # optimizer steps of the reference run
ROOT = Path(__file__).resolve().parents[2]


def tiny_config(corpus: Path, **overrides) -> dict:
    """A ~60k-parameter model, sequences of 32, checkpoints every 2 steps (small and frequent,
    so faults land in and between checkpoint writes)."""
    return tiny_training_config(corpus, TOTAL, **{
        "model.max_position_embeddings": 32,
        "model.residual_dropout": 0.1,  # dropout draws from the RNG: its state must resume too
        "data.gradient_accumulation_steps": 2,
        "optimizer.weight_decay": 0.1,
        "scheduler.strategy": "constant_with_warmup",
        "scheduler.warmup_steps": 3,
        "runtime.seed": 11,
        "runtime.device": "auto",
        "runtime.checkpoint": {"every_n_steps": 2, "max_keep": 3},
        "runtime.evaluation": {"every_n_steps": 20, "max_batches": 2, "best": {"max_keep": 1}},
        **overrides,
    })  # fmt: skip


def subprocess_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **extra}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def start_train(
    config: Path,
    *extra: str,
    env: dict[str, str] | None = None,
    preexec_fn: Callable[[], None] | None = None,
) -> subprocess.Popen:
    """`python -m lmstream train --config CONFIG EXTRA...` as a real child process."""
    return subprocess.Popen(
        [sys.executable, "-m", "lmstream", "train", "--config", str(config), *extra],
        env=env or subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=preexec_fn,
    )


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 300):
    """`python -m lmstream ARGS...` to completion: (exit code, stdout, stderr)."""
    proc = subprocess.run(
        [sys.executable, "-m", "lmstream", *args],
        env=env or subprocess_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return proc.returncode, proc.stdout, proc.stderr


def logged_steps(run_dir: Path) -> list[int]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    steps = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError, KeyError):
            record = json.loads(line)
            if "loss" in record:
                steps.append(record["step"])
    return steps


def wait_until(proc: subprocess.Popen, done: Callable[[], bool], timeout: float = 120) -> bool:
    """Poll ``done`` until it is true (True) or the process ends first (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if done():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.0005)
    raise AssertionError(f"condition not reached in {timeout}s")


def final_weights(run_dir: Path, step: int = TOTAL) -> dict[str, torch.Tensor]:
    return load_file(
        str(run_dir / "checkpoints" / ckpt.checkpoint_name(step) / "model.safetensors")
    )


def assert_same_weights(run_dir: Path, reference: Path, step: int = TOTAL) -> None:
    got, want = final_weights(run_dir, step), final_weights(reference, step)
    assert got.keys() == want.keys()
    differing = [k for k in got if not torch.equal(got[k], want[k])]
    assert not differing, f"weights differ from the uninterrupted run: {differing[:5]}"


def assert_checkpoints_complete(directory: Path) -> list[Path]:
    """Every step folder verifies (sizes and sha256); returns them, oldest first."""
    folders = ckpt.list_checkpoints(directory)
    for folder in folders:
        ckpt.verify_checkpoint(folder, check_hashes=True)
    return folders


def tree(root: Path) -> set[str]:
    """Every path under ``root`` (to prove that a refused command wrote nothing)."""
    return {str(p.relative_to(root)) for p in root.rglob("*")} if root.exists() else set()
