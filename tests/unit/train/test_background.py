"""The background checkpoint writer: snapshots independent of live tensors, jobs in order, errors
raised on the training thread, and nothing left running when the run ends."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from lmstream.errors import CheckpointError
from lmstream.train.background import CheckpointWriter, snapshot


def test_snapshot_of_host_tensors_is_independent_when_asked():
    live = {"state": {"w": {"exp_avg": torch.zeros(3)}}, "rng": [torch.ones(2)], "n": 5}
    copied = snapshot(live, clone_host_tensors=True)
    live["state"]["w"]["exp_avg"].add_(1.0)  # the optimizer goes on updating in place
    live["rng"][0].zero_()
    assert torch.equal(copied["state"]["w"]["exp_avg"], torch.zeros(3))
    assert torch.equal(copied["rng"][0], torch.ones(2)) and copied["n"] == 5
    shared = snapshot(live, clone_host_tensors=False)  # host copies made already (GPU runs)
    assert shared["state"]["w"]["exp_avg"].data_ptr() == live["state"]["w"]["exp_avg"].data_ptr()


def test_snapshot_keeps_container_types_and_copies_plain_values():
    live = {"pos": [1, 2], "pair": (torch.zeros(1), "x"), "meta": {"k": [3]}}
    copied = snapshot(live, clone_host_tensors=True)
    live["pos"].append(3)
    live["meta"]["k"].append(4)
    assert copied["pos"] == [1, 2] and copied["meta"] == {"k": [3]}
    assert isinstance(copied["pair"], tuple) and copied["pair"][1] == "x"


def test_jobs_run_one_at_a_time_in_order_off_the_calling_thread():
    writer = CheckpointWriter(background=True)
    order, threads = [], set()

    def job(name: str, delay: float):
        def run() -> list[str]:
            threads.add(threading.current_thread().name)
            time.sleep(delay)
            order.append(name)
            return [f"done {name}"]

        return run

    assert writer.submit(job("a", 0.2)) == []  # returns at once: the write goes on behind
    assert order == []
    assert writer.submit(job("b", 0.0)) == ["done a"]  # waits for a before starting b
    assert writer.close() == ["done b"]
    assert order == ["a", "b"]
    assert threads and all(name.startswith("lmstream-checkpoint") for name in threads)


def test_a_failed_write_is_raised_on_the_training_thread():
    writer = CheckpointWriter(background=True)

    def fail() -> list[str]:
        raise CheckpointError("cannot write checkpoint step-00000022 (File too large)")

    writer.submit(fail)
    deadline = time.monotonic() + 10
    with pytest.raises(CheckpointError, match="step-00000022"):
        while time.monotonic() < deadline:  # poll() as the loop does after each step
            writer.poll()
            time.sleep(0.01)
    assert writer.close() == []  # reported once


def test_poll_is_quiet_while_a_job_runs():
    writer = CheckpointWriter(background=True)
    release = threading.Event()
    writer.submit(lambda: [str(release.wait(10))])
    assert writer.poll() == []
    release.set()
    assert writer.wait() == ["True"]
    writer.close()


def test_inline_writer_runs_the_job_at_once():
    writer = CheckpointWriter(background=False)
    assert not writer.background
    assert writer.submit(lambda: ["written"]) == ["written"]
    assert writer.poll() == [] and writer.close() == []
