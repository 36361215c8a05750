"""A sitecustomize for tests of how an `lmstream` process ends (lmstream.process_exit).

Put on a child's PYTHONPATH with :func:`exit_probe_env`, it registers two atexit handlers in
every process that has EXIT_PROBE_MARKERS set (with ``ranks_only``, only torchrun's ranks):

* one writes ``atexit-<RANK or "main">`` into that folder, to show atexit handlers still ran;
* one, registered first so it runs last, starts a daemon thread that loops on a tensor operation
  (which releases the GIL in C++ and takes it back), so that a native thread is running when
  the interpreter would finalize: CPython's finalization then aborts the process with
  "terminate called without an active exception", as torch's process-group threads did.
"""

from __future__ import annotations

from pathlib import Path

from tests.support.process_runs import with_sitecustomize

SITECUSTOMIZE = """
import atexit, os, pathlib, threading

_folder = os.environ.get("EXIT_PROBE_MARKERS")
_ranks_only = os.environ.get("EXIT_PROBE_RANKS_ONLY") == "1"  # not torchrun's own process
if _folder and (os.environ.get("LOCAL_RANK") is not None or not _ranks_only):
    def _busy_native_thread():
        import torch

        a = torch.randn(256, 256)

        def spin():
            while True:
                a @ a

        threading.Thread(target=spin, daemon=True).start()

    def _mark():
        name = "atexit-" + os.environ.get("RANK", "main")
        (pathlib.Path(_folder) / name).write_text("ran")

    atexit.register(_busy_native_thread)  # registered first: runs last
    atexit.register(_mark)
"""


def exit_probe_env(
    tmp: Path, env: dict[str, str], ranks_only: bool = False
) -> tuple[dict[str, str], Path]:
    """``env`` with the probe on its PYTHONPATH; returns it and the folder of markers."""
    markers = tmp / "exit-probe-markers"
    markers.mkdir()
    probe = {"EXIT_PROBE_MARKERS": str(markers)}
    if ranks_only:
        probe["EXIT_PROBE_RANKS_ONLY"] = "1"
    return with_sitecustomize({**env, **probe}, tmp / "exit-probe-site", SITECUSTOMIZE), markers
