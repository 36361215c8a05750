"""`lmstream train` as a child process whose output pipes a test closes or reads (tests of how
the program ends: tests/integration/test_process_end*.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

OFFLINE_ENV = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
LMSTREAM = Path(sys.executable).parent / "lmstream"  # the console script users run


def start_train(config: Path, stderr: int = subprocess.PIPE, **kwargs) -> subprocess.Popen:
    """``lmstream train --config CONFIG`` with stdout a pipe (text), offline."""
    kwargs.setdefault("env", OFFLINE_ENV)
    return subprocess.Popen(
        [str(LMSTREAM), "train", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        **kwargs,
    )


def run_train(
    config: Path, env: dict[str, str] = OFFLINE_ENV, timeout: float = 300
) -> subprocess.CompletedProcess:
    """``lmstream train --config CONFIG`` run to its end, stdout and stderr captured (text)."""
    return subprocess.run(
        [str(LMSTREAM), "train", "--config", str(config)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def with_sitecustomize(env: dict[str, str], folder: Path, code: str) -> dict[str, str]:
    """``env`` whose Python processes run ``code`` at start: it is written to
    FOLDER/sitecustomize.py and FOLDER goes first on PYTHONPATH (what was there stays)."""
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(code)
    return {
        **env,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(folder), env.get("PYTHONPATH")])),
    }


def assert_trained_to(run: Path, steps: int, note: str = "") -> None:
    """The run saved its checkpoint of ``steps`` and logged every step up to it."""
    assert (run / "checkpoints" / f"step-{steps:08d}").is_dir(), note
    logged = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert max(logged) == steps


def assert_no_process_left(config: Path) -> None:
    """No process (a data loader worker) whose command line names ``config`` is still running."""
    left = subprocess.run(["pgrep", "-f", str(config)], capture_output=True, text=True)
    assert left.stdout == "", left.stdout
