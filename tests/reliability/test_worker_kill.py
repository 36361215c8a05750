"""A DataLoader worker SIGKILLed in the middle of a real `lmstream train` (data.num_workers 1):
the run ends within seconds with one clear line, not a hang, and `--resume` finishes it exactly.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from tests.reliability.support import (
    assert_checkpoints_complete,
    assert_same_weights,
    logged_steps,
    start_train,
    tiny_config,
    wait_until,
)
from tests.support.training import train_in_process, write_run

# The kill lands at a random moment: torch's SIGCHLD handler then raises inside the loader's
# fetch, the model step or a checkpoint write; each must end as the same one line.
pytestmark = pytest.mark.slow


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found.extend(int(c) for c in text)
    return found


def test_killed_worker_is_a_clear_error_and_resume_works(corpus, reference, tmp_path):
    run_dir = tmp_path / "run"
    config = write_run(run_dir, tiny_config(corpus, **{"data.num_workers": 1}))
    proc = start_train(config)
    try:
        assert wait_until(proc, lambda: max(logged_steps(run_dir), default=0) >= 5)
        workers = _children(proc.pid)
        assert len(workers) == 1, workers
        killed_at = time.monotonic()
        os.kill(workers[0], signal.SIGKILL)
        out, err = proc.communicate(timeout=60)
        took = time.monotonic() - killed_at
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode not in (0, -signal.SIGKILL), (proc.returncode, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert "data loader worker" in lines[0].lower() and "resume" in lines[0], lines[0]
    assert took < 30, f"took {took:.1f}s to notice the dead worker"
    assert assert_checkpoints_complete(run_dir / "checkpoints")
    assert train_in_process(config, "--resume") == 0
    assert_same_weights(run_dir, reference)
