"""Hub pinning (lmstream.data.pinning) under what users run, after `main` moved: a resume (and
an eval) of a checkpoint made before lmstream recorded the commits (no "data_commits" in its
trainer state); a --rollback to an older checkpoint, and eval of the best copy.

The Hub is the loopback stand-in (tests/support/hub_server.py); the runs are subprocesses.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tests.integration.test_hub_pinning import (
    HUB_ID,
    _env,
    _hub_run,
    _set_total_steps,
    _train,
)
from tests.reliability.support import assert_same_weights
from tests.support.hub_server import HubStandIn, dataset_sha, uneven_dataset_files
from tests.support.training import checkpoint_dir, kjv_corpus_fixture, logged

corpus = kjv_corpus_fixture(200, 300)
FIRST_PART = 4


def _uneven(corpus: Path, reverse: bool) -> dict[str, bytes]:
    """Three files of 5, 15 and 180 documents (the reversed order is `main` after the push)."""
    return uneven_dataset_files(corpus / "train.jsonl", [5, 15], reverse)


def _forget_commits(checkpoint: Path) -> None:
    """Make ``checkpoint`` look as an lmstream without pinning wrote it (its manifest updated:
    else the resume skips it as damaged and takes an older one)."""
    state_path = checkpoint / "trainer_state.pt"
    state = torch.load(state_path, weights_only=True)
    del state["data_commits"]
    torch.save(state, state_path)
    manifest = json.loads((checkpoint / "manifest.json").read_text())
    data = state_path.read_bytes()
    entry = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    manifest["files"]["trainer_state.pt"] = entry
    (checkpoint / "manifest.json").write_text(json.dumps(manifest, indent=2))


@pytest.mark.slow
def test_resume_of_a_checkpoint_without_recorded_commits_says_it_may_read_other_data(
    corpus, tmp_path
):
    """A checkpoint of an lmstream without pinning: the resume reads `main` as it is now (there
    is no record of what the run read), and says so in one line instead of "pinned for this
    run", which reads as if nothing could have changed; so does `eval` of that checkpoint."""
    first, moved = _uneven(corpus, False), _uneven(corpus, True)
    with HubStandIn() as hub:
        hub.datasets[HUB_ID] = first
        env = _env(hub, tmp_path / "hf-home")
        config = _hub_run(tmp_path / "old", corpus, FIRST_PART)
        done = _train(config, env)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        _forget_commits(checkpoint_dir(config.parent, FIRST_PART))
        hub.datasets[HUB_ID] = moved
        _set_total_steps(config, FIRST_PART + 2)
        resumed = _train(config, env, "--resume")
        evaluated = subprocess.run(
            [sys.executable, "-m", "lmstream", "eval", "--checkpoint",
             str(checkpoint_dir(config.parent, FIRST_PART)), "--json"],
            env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    new = dataset_sha(moved)
    said = [line for line in resumed.stdout.splitlines() if line.startswith(f"data: {HUB_ID} ")]
    assert len(said) == 1, said
    assert said[0].startswith(f"data: {HUB_ID} at main = commit {new[:7]} "), said
    assert "records no commit" in said[0], said
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    said = [line for line in evaluated.stderr.splitlines() if "records no commit" in line]
    assert len(said) == 1 and HUB_ID in said[0], evaluated.stderr[-2000:]


@pytest.mark.slow
def test_rollback_after_main_moved_and_eval_of_best_copy(corpus, tmp_path):
    first, moved = _uneven(corpus, False), _uneven(corpus, True)
    with HubStandIn() as hub:
        hub.datasets[HUB_ID] = first
        env = _env(hub, tmp_path / "hf-home")
        reference = _hub_run(tmp_path / "reference", corpus, 8)
        config = _hub_run(tmp_path / "rolled", corpus, 8)
        runs = [_train(reference, env), _train(config, env)]
        hub.datasets[HUB_ID] = moved
        back = str(checkpoint_dir(config.parent, 4))
        runs.append(_train(config, env, "--resume", back, "--rollback"))
        best = sorted((config.parent / "best").iterdir())
        evals = [
            subprocess.run(
                [sys.executable, "-m", "lmstream", "eval", "--checkpoint", str(b), "--json"],
                env=env,
                capture_output=True,
                text=True,
                timeout=300,
            )  # fmt: skip
            for b in best
        ]
        resolved = [path for _, path, *_ in hub.requests if "/resolve/" in path]
    for done in runs:
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert not any(f"/resolve/{dataset_sha(moved)}/" in p for p in resolved)
    run, ref = config.parent, reference.parent
    assert logged(run, "loss") == logged(ref, "loss")
    assert_same_weights(run, ref, step=8)
    vals = logged(run, "val_loss")
    for b, done in zip(best, evals, strict=True):
        assert done.returncode == 0, done.stderr[-2000:]
        step = int(b.name.split("-")[1])
        assert json.loads(done.stdout)["val_loss"] == pytest.approx(vals[step])
