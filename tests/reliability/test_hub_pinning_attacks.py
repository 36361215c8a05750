"""Hub pinning (lmstream.data.pinning) under what users run: 8 data workers reading a Hub repo
of very uneven files, resumed after `main` moved; and a resume from a checkpoint made before
lmstream recorded the commits (no "data_commits" in its trainer state) after `main` moved.

The Hub is the loopback stand-in (tests/support/hub_server.py); the runs are subprocesses.
"""

from __future__ import annotations

import hashlib
import json
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
from tests.support.hub_server import HubStandIn, dataset_sha
from tests.support.training import checkpoint_dir, kjv_corpus_fixture, logged

corpus = kjv_corpus_fixture(200, 300)
STEPS, FIRST_PART = 6, 4


def _uneven(corpus: Path, reverse: bool) -> dict[str, bytes]:
    """Three files of 5, 15 and 180 documents (the reversed order is `main` after the push)."""
    lines = (corpus / "train.jsonl").read_bytes().splitlines(keepends=True)
    if reverse:
        lines.reverse()
    cuts = [(0, 5), (5, 20), (20, len(lines))]
    return {f"data/train-{i}.jsonl": b"".join(lines[a:b]) for i, (a, b) in enumerate(cuts)}


def _with_workers(config: Path, workers: int) -> None:
    import yaml

    cfg = yaml.safe_load(config.read_text())
    cfg["data"]["num_workers"] = workers
    config.write_text(yaml.safe_dump(cfg))


@pytest.mark.slow
def test_eight_workers_on_uneven_files_resume_after_main_moved_as_uninterrupted(corpus, tmp_path):
    first, moved = _uneven(corpus, False), _uneven(corpus, True)
    with HubStandIn() as hub:
        hub.datasets[HUB_ID] = first
        env = _env(hub, tmp_path / "hf-home")
        reference = _hub_run(tmp_path / "reference", corpus, STEPS)
        config = _hub_run(tmp_path / "resumed", corpus, FIRST_PART)
        for path in (reference, config):
            _with_workers(path, 8)
        runs = [_train(reference, env), _train(config, env)]
        hub.datasets[HUB_ID] = moved
        _set_total_steps(config, STEPS)
        runs.append(_train(config, env, "--resume"))
        resolved = [path for _, path, *_ in hub.requests if "/resolve/" in path]
    for done in runs:
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert not any(f"/resolve/{dataset_sha(moved)}/" in p for p in resolved)
    run, ref = tmp_path / "resumed", tmp_path / "reference"
    assert logged(run, "loss") == logged(ref, "loss")
    assert_same_weights(run, ref, step=STEPS)


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
    run", which reads as if nothing could have changed."""
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
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    new = dataset_sha(moved)
    said = [line for line in resumed.stdout.splitlines() if line.startswith(f"data: {HUB_ID} ")]
    assert len(said) == 1, said
    assert said[0].startswith(f"data: {HUB_ID} at main = commit {new[:7]} "), said
    assert "records no commit" in said[0], said
