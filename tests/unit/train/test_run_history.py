"""The run folder keeps its history (issue #19): lineage-aware rotation, symlinked checkpoint
folders, a re-save interrupted between its two renames, temporaries of a live writer, the run
lock, and damaged checkpoints named with the newest intact one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lmstream.config import parse_training_config
from lmstream.errors import CheckpointError, ConfigError
from lmstream.train import checkpoint as ck
from lmstream.train import run_folder
from lmstream.train.checkpointer import BestCheckpoints

from .conftest import small_config_dict


def _save(directory: Path, step: int, cfg, parent: str | None = None) -> Path:
    state = {"w": torch.full((2, 2), float(step))}
    return ck.save_checkpoint(
        directory, step, state, cfg, {"step": step}, extra_manifest={"parent": parent}
    )


def _dead_pid() -> int:
    """The pid of a process that has ended (not reused this soon on a quiet machine)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_rotation_keeps_the_current_lineage_not_the_highest_steps(tmp_path, small_config):
    """Issue #19 item 1: after a rollback to step 10, saving 15 and 18 with max_keep 2 must not
    delete them in favour of the old branch's 20 and 30."""
    d = tmp_path / "ckpts"
    _save(d, 10, small_config)
    _save(d, 20, small_config, "step-00000010")
    _save(d, 30, small_config, "step-00000020")
    new = _save(d, 15, small_config, "step-00000010")
    run_folder.rotate_lineage(new, 2)
    new = _save(d, 18, small_config, "step-00000015")
    deleted = run_folder.rotate_lineage(new, 2)
    assert [p.name for p in deleted] == ["step-00000010"]
    names = [p.name for p in ck.list_checkpoints(d)]
    assert names == ["step-00000015", "step-00000018", "step-00000020", "step-00000030"]
    assert [p.name for p in run_folder.lineage(d / "step-00000018")] == [
        "step-00000018",
        "step-00000015",
    ]


def test_lineage_of_checkpoints_without_parent_key_is_the_step_order(tmp_path, small_config):
    d = tmp_path / "ckpts"
    for step in (1, 2, 3):  # written before manifests recorded a parent
        ck.save_checkpoint(d, step, {"w": torch.zeros(1)}, small_config, {"step": step})
    assert [p.name[-1] for p in run_folder.lineage(d / "step-00000003")] == ["3", "2", "1"]


def test_symlinked_checkpoint_folder_is_unlinked_by_rotation(tmp_path, small_config):
    """Issue #19 item 7: a checkpoint moved to another disk and linked back used to crash
    every rotation with `OSError: Cannot call rmtree on a symbolic link`."""
    d, other = tmp_path / "ckpts", tmp_path / "other-disk"
    moved = _save(other, 1, small_config)
    d.mkdir()
    (d / moved.name).symlink_to(moved, target_is_directory=True)
    _save(d, 2, small_config, "step-00000001")
    newest = _save(d, 3, small_config, "step-00000002")
    run_folder.rotate_lineage(newest, 2)
    assert not (d / moved.name).exists() and not (d / moved.name).is_symlink()
    ck.verify_checkpoint(moved, check_hashes=True)  # the target is left in place
    assert run_folder.lineage(newest) == [newest, d / "step-00000002"]
    BestCheckpoints(d, 1).prune()  # no val_loss: nothing to prune, and no crash either


def test_resave_killed_between_its_two_renames_is_recovered(tmp_path, small_config):
    """Item 12: a SIGKILL between `rename(final, .tmp-old-...)` and `rename(tmp, final)` left
    the complete step only as .tmp-old-*, which resume ignored and the next save deleted."""
    d = tmp_path / "ckpts"
    _save(d, 4, small_config)
    saved = _save(d, 6, small_config, "step-00000004")
    os.rename(saved, d / f".tmp-old-{saved.name}-{_dead_pid()}")  # what the kill leaves
    assert ck.resolve_checkpoint(d) == saved
    ck.verify_checkpoint(saved, check_hashes=True)


def test_temporaries_of_a_live_writer_are_left_alone(tmp_path, small_config):
    """Item 2: a second process's temporary folder is not deleted by this one's save; a dead
    process's is."""
    d = tmp_path / "ckpts"
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        theirs = d / f".tmp-step-00000002-{live.pid}"
        stale = d / f".tmp-step-00000001-{_dead_pid()}"
        for folder in (theirs, stale):
            folder.mkdir(parents=True)
        _save(d, 3, small_config)
        assert theirs.is_dir() and not stale.exists()
    finally:
        live.kill()
        live.wait()


def test_damaged_checkpoint_named_explicitly_points_to_the_newest_intact(tmp_path, small_config):
    d = tmp_path / "ckpts"
    _save(d, 1, small_config)
    good = _save(d, 2, small_config, "step-00000001")
    bad = _save(d, 3, small_config, "step-00000002")
    data = bytearray((bad / ck.MODEL_FILE).read_bytes())
    data[-4:] = b"\xff\xff\xff\xff"
    (bad / ck.MODEL_FILE).write_bytes(bytes(data))
    with pytest.raises(CheckpointError) as err:
        ck.resolve_checkpoint(bad, check_hashes=True)
    assert "sha256" in str(err.value) and f"newest intact checkpoint there is {good}" in str(
        err.value
    )
    assert "\n" not in str(err.value)


def test_second_lock_on_a_run_folder_names_the_holder(tmp_path):
    first = run_folder.RunLock(tmp_path).acquire()
    try:
        with pytest.raises(run_folder.RunFolderError) as err:
            run_folder.RunLock(tmp_path).acquire()
        assert f"pid {os.getpid()}" in str(err.value) and "in use" in str(err.value)
    finally:
        first.release()
    run_folder.RunLock(tmp_path).acquire().release()  # free again once released


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    (tmp_path / run_folder.LOCK_FILE).write_text(
        f'{{"pid": {_dead_pid()}, "host": "h", "started": 0}}'
    )
    lock = run_folder.RunLock(tmp_path).acquire()
    try:
        assert lock.took_over and "host h" in lock.took_over
    finally:
        lock.release()


def test_best_directory_equal_to_checkpoint_directory_is_refused(tmp_path):
    """Item 12: the best keeper's pruning and the rotation would delete each other's folders."""
    raw = small_config_dict(tmp_path)
    raw["runtime"] = {
        "checkpoint": {"directory": str(tmp_path / "ck")},
        "evaluation": {"best": {"directory": str(tmp_path / "ck")}},
    }
    with pytest.raises(ConfigError, match="runtime.evaluation.best.directory"):
        parse_training_config(raw, tmp_path)


_KILL_AT_FIRST_UNLINK = """
import os, signal, sys
from pathlib import Path
from lmstream.train import run_folder
real = os.unlink
def unlink(*args, **kwargs):  # the rotation's first file deletion: SIGKILL right there
    os.kill(os.getpid(), signal.SIGKILL)
os.unlink = unlink
run_folder.rotate_lineage(Path(sys.argv[1]), 1)
"""


def test_rotation_killed_mid_delete_leaves_no_half_checkpoint(tmp_path, small_config):
    """The heavy SIGKILL test once found a step folder with a manifest and no
    model.safetensors: a kill inside rotation's in-place rmtree. A removed checkpoint must
    vanish at once (renamed to a temporary first), and the next save clears what is left."""
    d = tmp_path / "ckpts"
    old = _save(d, 1, small_config)
    new = _save(d, 2, small_config, old.name)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run([sys.executable, "-c", _KILL_AT_FIRST_UNLINK, str(new)], env=env)
    assert proc.returncode == -9
    assert ck.list_checkpoints(d) == [new]  # step 1 is gone whole, not half
    ck.verify_checkpoint(new, check_hashes=True)
    _save(d, 3, small_config, new.name)
    assert sorted(p.name for p in d.iterdir()) == ["step-00000002", "step-00000003"]
