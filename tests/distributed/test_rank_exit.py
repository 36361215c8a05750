"""A rank that has trained to its end exits 0 even when a native thread is still running then
(lmstream.process_exit): CPython's finalization would abort it with "terminate called without an
active exception". The thread here is a tensor operation looping on a daemon thread, started by
the last atexit handler (a sitecustomize on the job's PYTHONPATH), so it is running when the
interpreter would finalize; torch's process-group threads and native thread pools are what a
real rank has at that moment. The other atexit handlers must still have run."""

from __future__ import annotations

import os
import subprocess
import textwrap

import pytest
from tests.distributed.support import JOB_TIMEOUT_S, job_env, tiny_config, torchrun_args
from tests.support.training import write_run

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

SITECUSTOMIZE = textwrap.dedent(
    """
    import atexit, os, pathlib, threading

    if os.environ.get("LOCAL_RANK") is not None:  # the ranks, not torchrun itself
        def busy_native_thread():
            import torch

            a = torch.randn(256, 256)

            def spin():
                while True:
                    a @ a  # releases the GIL in C++ and takes it back

            threading.Thread(target=spin, daemon=True).start()

        def mark():
            folder = pathlib.Path(os.environ["EXIT_MARKERS"])
            (folder / ("atexit-rank-" + os.environ["RANK"])).write_text("ran")

        atexit.register(busy_native_thread)  # registered first: runs last
        atexit.register(mark)
    """
)


def test_a_finished_rank_exits_0_with_a_native_thread_running(corpus, tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    markers = tmp_path / "markers"
    markers.mkdir()
    cfg = tiny_config(corpus, **{"scheduler.total_steps": 4, "scheduler.warmup_steps": 1})
    config = write_run(tmp_path / "run", cfg)
    env = job_env()
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")]))
    env["EXIT_MARKERS"] = str(markers)
    done = subprocess.run(
        torchrun_args("train", "--config", str(config)),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=JOB_TIMEOUT_S,
    )
    assert done.returncode == 0, done.stdout
    assert "terminate called" not in done.stdout, done.stdout
    assert "== done: step 4 of 4" in done.stdout, done.stdout
    assert sorted(p.name for p in markers.iterdir()) == ["atexit-rank-0", "atexit-rank-1"]
