"""How an `lmstream` process ends (lmstream.process_exit): the exit code, atexit handlers, a
non-daemon thread's work and a still-open file's buffer all kept; the interpreter's
finalization (module teardown, a global object's __del__) skipped."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap


def test_shutdown_work_is_kept_and_finalization_skipped(tmp_path):
    script = textwrap.dedent(
        f"""
        import atexit, pathlib, threading, time
        from lmstream.process_exit import exit_without_finalizing

        folder = pathlib.Path({str(tmp_path)!r})
        log = open(folder / "open-file.txt", "w")  # still referenced at exit, never flushed
        log.write("buffered line")

        class Finalized:
            def __del__(self):
                (folder / "finalized").write_text("module teardown ran")

        kept = Finalized()
        atexit.register(lambda: (folder / "atexit").write_text("ran"))

        def late_writer():
            time.sleep(0.3)
            (folder / "thread").write_text("finished")

        threading.Thread(target=late_writer).start()  # non-daemon: joined, as on a normal exit
        exit_without_finalizing(3)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 3, done.stderr
    assert (tmp_path / "open-file.txt").read_text() == "buffered line"
    assert (tmp_path / "atexit").read_text() == "ran"
    assert (tmp_path / "thread").read_text() == "finished"
    assert not (tmp_path / "finalized").exists()  # the teardown, and its cost, skipped


def test_output_that_cannot_be_written_at_exit_fails_the_process():
    # stdout's buffer is written at exit; where that fails (a full disk, here /dev/full) the
    # output is lost and the process must say so, with CPython's own exit code 120, not 0.
    script = "from lmstream.process_exit import exit_without_finalizing\n"
    script += "print('result line')\nexit_without_finalizing(0)\n"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    with open("/dev/full", "w") as full:
        done = subprocess.run(
            [sys.executable, "-c", script], stdout=full, stderr=subprocess.PIPE, text=True, env=env
        )
    assert done.returncode == 120, done.stderr
    assert "No space left on device" in done.stderr, done.stderr
