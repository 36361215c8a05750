"""lmstream.collector: the cyclic collector is paused while a command starts, and what start-up
builds is still searched for garbage. Each case runs in a fresh interpreter: freezing the test
process's objects would outlive the test."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def _run(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_start_up_after_a_pause_collects_the_builds_garbage_and_turns_the_collector_on():
    out = _run(
        """
        import gc, weakref
        from lmstream import collector

        class Node: pass

        collector.pause()
        assert not gc.isenabled()
        collector.imports_done()          # everything so far: permanent generation
        frozen = gc.get_freeze_count()
        built = Node(); built.me = built  # a cycle made by the build, then dropped
        gone = weakref.ref(built)
        del built
        collector.start_up_done()
        print(gone() is None, gc.isenabled(), frozen > 0, gc.get_freeze_count() >= frozen)
        """
    )
    assert out == "True True True True"


def test_a_process_that_did_not_pause_is_left_as_it_was():
    """train() called as a library (tests): no freeze, the collector as the caller set it."""
    out = _run(
        """
        import gc
        from lmstream import collector

        collector.imports_done()
        collector.start_up_done()
        enabled = gc.isenabled()
        gc.disable()  # a caller that turned it off itself keeps it off
        collector.pause()
        collector.start_up_done()
        print(gc.get_freeze_count(), enabled, gc.isenabled())
        """
    )
    assert out == "0 True False"


def test_a_loader_worker_forked_during_start_up_collects_its_garbage():
    """DataLoader workers are forked while the rank's collector is paused: they read for the
    whole run, so each turns it on at its start."""
    out = _run(
        """
        import gc
        from lmstream.data.worker_processes import init_worker

        gc.disable()
        init_worker(0, 0)
        print(gc.isenabled())
        """
    )
    assert out == "True"
