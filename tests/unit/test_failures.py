"""lmstream.failures: the one place that tells failures apart and words them for users."""

from __future__ import annotations

import errno

from lmstream import failures
from lmstream.errors import CheckpointError, LmstreamError


def test_translate_keeps_user_errors_and_words_a_dead_worker():
    err = CheckpointError("step-00000003: incomplete checkpoint")
    assert failures.translate(err) is err
    # torch's own text, raised from its SIGCHLD handler anywhere in the main process
    dead = RuntimeError(
        "DataLoader worker (pid 4242) is killed by signal: Killed. Details are lost due to "
        "multiprocessing. Rerunning with num_workers=0 may give better error trace."
    )
    text = str(failures.translate(dead))
    assert text.startswith("a data loader worker (pid 4242) died (killed by signal 9, SIGKILL")
    assert "out-of-memory killer" in text and text.endswith("resume with --resume")
    assert failures.translate(RuntimeError("shape mismatch")) is None  # a bug: traceback


def test_a_failed_collective_is_a_peer_failure_only_with_several_ranks():
    raw = RuntimeError("[../gloo/transport/tcp/pair.cc:537] Connection closed by peer [::1]:1")
    assert failures.translate(raw) is None
    assert isinstance(failures.translate(raw, distributed=True), LmstreamError)


def test_write_failures_of_each_writer_are_recognised():
    assert failures.is_write_failure(OSError(errno.ENOSPC, "No space left on device"))
    zip_writer = RuntimeError(
        "[enforce fail at inline_container.cc:603] . unexpected pos 64 vs 0: "
        "PytorchStreamWriter failed writing file data/0: file write failed"
    )
    assert failures.is_write_failure(zip_writer)
    assert not failures.is_write_failure(RuntimeError("CUDA error: device-side assert"))


def test_loader_failure_unwraps_a_user_error_re_raised_from_a_worker():
    wrapped = LmstreamError(
        "Caught LmstreamError in DataLoader worker process 0.\nTraceback (most recent call "
        "last):\n  ...\nlmstream.errors.LmstreamError: data worker 0 got no documents"
    )
    assert str(failures.loader_failure(wrapped, 2)) == "data worker 0 got no documents"
    broken = ConnectionResetError("Connection reset by peer")
    assert "a data loader worker died" in str(failures.loader_failure(broken, 2))
    assert failures.loader_failure(broken, 0) is None  # no workers: not a worker's death
