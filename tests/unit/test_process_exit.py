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


def test_ctrl_c_while_threads_are_joined_at_exit_ends_the_process_with_130(tmp_path):
    """Ctrl-C while the exit waits for a non-daemon thread (a tracker's, a writer's): the
    KeyboardInterrupt escaped exit_without_finalizing with a traceback out of it, into the
    interpreter's finalization that it exists to skip (the console script then ended 1, as a
    bug does). The process now ends at once with 130 and no traceback."""
    import signal
    import time

    marker = tmp_path / "joining"
    script = textwrap.dedent(
        f"""
        import pathlib, threading, time
        from lmstream.process_exit import exit_without_finalizing

        def slow():
            while threading.main_thread().is_alive():  # until the exit joins this thread
                time.sleep(0.01)
            pathlib.Path({str(marker)!r}).write_text("joining")
            time.sleep(120)

        threading.Thread(target=slow).start()
        exit_without_finalizing(0)
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 60
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.exists()
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err, err


def test_a_file_opened_while_lmstream_started_is_flushed_at_exit(tmp_path):
    """What exists when start-up ends is frozen (lmstream.collector), and gc.get_objects() leaves
    frozen objects out: a file a run opened during start-up lost its buffer at exit."""
    script = textwrap.dedent(
        f"""
        import pathlib
        from lmstream import collector
        from lmstream.process_exit import exit_without_finalizing

        collector.pause()  # as the entry point does
        collector.imports_done()
        log = open(pathlib.Path({str(tmp_path)!r}) / "open-file.txt", "w")  # built at start-up
        collector.start_up_done()
        log.write("buffered line")
        exit_without_finalizing(0)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "open-file.txt").read_text() == "buffered line"
