"""A run reads a Hub dataset at the commit it started with (lmstream.data.pinning): a resume
after `main` moved trains exactly as the uninterrupted run on the original files; a commit that
a force-push removed stops the resume in one line; offline, a fresh start goes on unpinned and
says so.

The Hub is the loopback stand-in (tests/support/hub_server.py), which keeps each version of a
dataset's files as a commit. The runs are subprocesses: huggingface_hub reads HF_ENDPOINT and
HF_HUB_OFFLINE once, at import.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from tests.reliability.support import assert_same_weights, subprocess_env, tiny_config
from tests.support.hub_server import HubStandIn, dataset_sha
from tests.support.training import checkpoint_dir, kjv_corpus_fixture, logged, write_run

from lmstream.data.mixture_plan import resolve_sources
from lmstream.data.pinning import Pin, pin_sources, pinned, reading_at
from lmstream.data.sources import SourceSpec

corpus = kjv_corpus_fixture(200, 300)
HUB_ID = "acme/kjv"
STEPS, FIRST_PART = 8, 4  # the reference's steps; the interrupted run stops after FIRST_PART
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _versions(corpus: Path) -> tuple[dict[str, bytes], dict[str, bytes]]:
    """The dataset's files at the first commit, and at the commit that moves `main`: the same
    documents in reverse order (another holdout, another deal)."""
    lines = (corpus / "train.jsonl").read_bytes().splitlines(keepends=True)
    first = {"data/train-0.jsonl": b"".join(lines[:100]),
             "data/train-1.jsonl": b"".join(lines[100:])}  # fmt: skip
    lines.reverse()
    moved = {"data/train-0.jsonl": b"".join(lines[:100]),
             "data/train-1.jsonl": b"".join(lines[100:])}  # fmt: skip
    return first, moved


def _hub_run(run_dir: Path, corpus: Path, total_steps: int) -> Path:
    """A run folder streaming HUB_ID at main (no revision given), checkpoints every 2 steps."""
    config = write_run(run_dir, tiny_config(corpus, **{"scheduler.total_steps": total_steps}))
    streaming = {"version": 1, "streaming": True, "dataset": HUB_ID, "max_samples": None,
                 "stream_batch_size": 50}  # fmt: skip
    (run_dir / "streaming_config.json").write_text(json.dumps(streaming))
    return config


def _set_total_steps(config: Path, total_steps: int) -> None:
    cfg = yaml.safe_load(config.read_text())
    cfg["scheduler"]["total_steps"] = total_steps  # allowed: the schedule is constant by then
    config.write_text(yaml.safe_dump(cfg))


def _env(hub: HubStandIn, home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in subprocess_env().items()
           if k not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_TOKEN")}  # fmt: skip
    return env | {"HF_ENDPOINT": hub.url, "HF_HOME": str(home),
                  "HF_HUB_DISABLE_TELEMETRY": "1", **extra}  # fmt: skip


def _train(config: Path, env: dict[str, str], *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lmstream", "train", "--config", str(config), *extra],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


@pytest.fixture(scope="module")
def moved(corpus, tmp_path_factory):
    """The reference run (STEPS on the first commit), the interrupted run (FIRST_PART steps),
    then `main` moved to other files and the interrupted run resumed to STEPS."""
    root = tmp_path_factory.mktemp("pinning")
    first, moved_files = _versions(corpus)
    with HubStandIn() as hub:
        hub.datasets[HUB_ID] = first
        env = _env(hub, root / "hf-home")
        reference = _hub_run(root / "reference", corpus, STEPS)
        config = _hub_run(root / "resumed", corpus, FIRST_PART)
        ref_done, before = _train(reference, env), len(hub.requests)
        first_done, first_requests = _train(config, env), hub.requests[before:]
        hub.datasets[HUB_ID] = moved_files  # a new commit on main
        _set_total_steps(config, STEPS)
        resumed = _train(config, env, "--resume")
        yield {"hub": hub, "env": env, "root": root, "config": config,
               "runs": (ref_done, first_done, resumed), "first_requests": first_requests,
               "commits": (dataset_sha(first), dataset_sha(moved_files))}  # fmt: skip


@pytest.mark.slow
def test_resume_after_main_moved_trains_as_the_uninterrupted_run(moved):
    ref_done, first_done, resumed = moved["runs"]
    for done in moved["runs"]:
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    old, new = moved["commits"]
    assert f"data: {HUB_ID} at main = commit {old[:7]} (pinned for this run)" in first_done.stdout
    assert (
        f"data: {HUB_ID} at main = commit {old[:7]} (pinned when the run started; the branch "
        f"is now at {new[:7]})"
    ) in resumed.stdout
    run, reference = moved["root"] / "resumed", moved["root"] / "reference"
    assert logged(run, "loss") == logged(reference, "loss")
    assert logged(run, "val_loss")[STEPS] == logged(reference, "val_loss")[STEPS]
    assert_same_weights(run, reference, step=STEPS)
    recorded = [{"dataset": HUB_ID, "revision": None, "commit": old}]
    assert _recorded_commits(checkpoint_dir(run, STEPS)) == recorded
    resolved = [r[1] for r in moved["hub"].requests if "/resolve/" in r[1]]
    assert not any(f"/resolve/{new}/" in path for path in resolved)  # the new commit: unread


@pytest.mark.slow
def test_eval_of_a_checkpoint_reads_the_commit_it_was_trained_on(moved):
    """`lmstream eval` after main moved: the checkpoint's validation documents, so the val_loss
    training logged (main's new commit holds other first documents)."""
    run = moved["root"] / "resumed"
    done = subprocess.run(
        [sys.executable, "-m", "lmstream", "eval", "--checkpoint",
         str(checkpoint_dir(run, STEPS)), "--json"],
        env=moved["env"], capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout)["val_loss"] == pytest.approx(logged(run, "val_loss")[STEPS])


@pytest.mark.slow
def test_a_fresh_start_asks_for_the_branch_once_and_reads_by_commit(moved):
    """One request resolves main; the survey, the validation set and the loader all read the
    commit, so a push during start-up cannot give them different documents."""
    old, _ = moved["commits"]
    paths = [path for _, path, *_ in moved["first_requests"]]
    assert paths.count(f"/api/datasets/{HUB_ID}") == 1
    by_name = [p for p in paths if "/main" in p or p.endswith(f"/api/datasets/{HUB_ID}")]
    assert by_name == [f"/api/datasets/{HUB_ID}"], by_name
    assert any(f"/resolve/{old}/data/" in p for p in paths)


@pytest.mark.slow
def test_resume_when_the_pinned_commit_is_gone_stops_naming_it(moved):
    old, _ = moved["commits"]
    del moved["hub"].commits[HUB_ID][old]  # a force-push removed the run's commit
    _set_total_steps(moved["config"], STEPS + 2)
    done = _train(moved["config"], moved["env"], "--resume")
    assert done.returncode == 4, done.stdout[-2000:] + done.stderr[-2000:]
    said = [line for line in done.stderr.splitlines() if old in line]
    assert len(said) == 1 and said[0].startswith(
        f"lmstream train: error: cannot resume: {HUB_ID} has no commit {old} "
    )


@pytest.mark.slow
def test_fresh_start_whose_commit_cannot_be_resolved_goes_on_unpinned_and_says_so(moved):
    """The Hub refuses the one request that resolves main (the reads themselves work): the run
    trains as before, its source unpinned, and says so in one line. (Offline, a Hub dataset
    cannot be streamed at all; the offline pin is checked in process below.)"""
    config = moved["root"] / "refused" / "training.yaml"
    config.parent.mkdir()
    for name in ("training.yaml", "streaming_config.json"):
        shutil.copy(moved["root"] / "reference" / name, config.parent / name)
    _set_total_steps(config, FIRST_PART)
    moved["hub"].refuse_dataset_info = 1
    done = _train(config, moved["env"])
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    said = [line for line in done.stdout.splitlines() if line.startswith(f"data: {HUB_ID} ")]
    assert len(said) == 1 and said[0].startswith(
        f"data: {HUB_ID} at main: not pinned to a commit (HfHubHTTPError: Server error '503"
    ), said
    assert said[0].endswith("; a resume after main moves reads the new commit")
    assert _recorded_commits(checkpoint_dir(config.parent, FIRST_PART)) == []  # none to reuse


@pytest.mark.slow
def test_every_hub_source_of_a_mixture_is_pinned_and_recorded(corpus, tmp_path):
    first, other = _versions(corpus)
    config = _hub_run(tmp_path / "mix", corpus, 2)
    sources = [{"name": "kjv", "dataset": HUB_ID, "weight": 0.75},
               {"name": "rev", "dataset": "acme/reversed", "revision": "v1", "weight": 0.25}]  # fmt: skip
    (config.parent / "streaming_config.json").write_text(
        json.dumps({"version": 2, "sources": sources, "stream_batch_size": 50})
    )
    _set_total_steps(config, 4)
    with HubStandIn() as hub:
        hub.datasets |= {HUB_ID: first, "acme/reversed": other}
        done = _train(config, _env(hub, tmp_path / "hf-home"))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    commits = dataset_sha(first), dataset_sha(other)
    named = [(HUB_ID, "main"), ("acme/reversed", "v1")]
    for (name, rev), commit in zip(named, commits, strict=True):
        assert f"data: {name} at {rev} = commit {commit[:7]} (pinned for this run)" in done.stdout
    assert _recorded_commits(checkpoint_dir(config.parent, 4)) == [
        {"dataset": HUB_ID, "revision": None, "commit": commits[0]},
        {"dataset": "acme/reversed", "revision": "v1", "commit": commits[1]},
    ]


def _recorded_commits(checkpoint: Path) -> list:
    return torch.load(checkpoint / "trainer_state.pt", weights_only=True)["data_commits"]


# ---- in process (the tests run with HF_HUB_OFFLINE=1: any request to the Hub fails)


def test_offline_a_branch_is_left_unpinned_and_a_commit_is_its_own_pin():
    branch, commit = pin_sources(
        [SourceSpec("acme/docs"), SourceSpec("acme/code", revision=COMMIT),
         SourceSpec("acme/docs")], None,
    )  # fmt: skip
    assert branch == Pin("acme/docs", None, None, reason="offline: HF_HUB_OFFLINE is set")
    assert commit == Pin("acme/code", COMMIT, COMMIT)
    assert branch.record()["commit"] is None and commit.record()["commit"] == COMMIT


def test_a_recorded_commit_is_read_even_when_the_branch_cannot_be_asked():
    (pin,) = pin_sources([SourceSpec("acme/docs", revision="main")],
                         [{"dataset": "acme/docs", "revision": "main", "commit": COMMIT}])  # fmt: skip
    assert pin == Pin("acme/docs", "main", COMMIT, recorded=True)
    said = f"data: acme/docs at main = commit {COMMIT[:7]} (pinned when the run started)"
    assert pin.line() == said


def test_every_hub_source_of_a_mixture_reads_its_pinned_commit(tmp_path, corpus):
    """Within reading_at, each Hub source's plan reads its commit; its identity (the resume
    check, the validation cache key) keeps the revision as configured; files are untouched."""
    config = write_run(tmp_path, tiny_config(corpus))
    sources = [{"name": "web", "dataset": "acme/web", "weight": 0.5},
               {"name": "code", "dataset": "acme/code", "revision": "v1", "weight": 0.3},
               {"name": "local", "dataset": str(corpus / "train.jsonl"), "weight": 0.2}]  # fmt: skip
    (tmp_path / "streaming_config.json").write_text(json.dumps({"version": 2, "sources": sources}))
    cfg = yaml.safe_load(config.read_text())
    from lmstream.config import parse_training_config

    cfg = parse_training_config(cfg, tmp_path)
    pins = [Pin("acme/web", None, "a" * 40), Pin("acme/code", "v1", "b" * 40)]
    with reading_at(pins):
        plans = {s.name: s.plan for s in resolve_sources(cfg, tmp_path)}
    outside = {s.name: s.plan for s in resolve_sources(cfg, tmp_path)}
    assert plans["web"].spec.revision == "a" * 40 and plans["code"].spec.revision == "b" * 40
    assert plans["local"].spec == outside["local"].spec
    assert outside["web"].spec.revision is None and outside["code"].spec.revision == "v1"
    assert [plans[n].identity for n in plans] == [outside[n].identity for n in outside]
    assert pinned(SourceSpec("acme/web")) == SourceSpec("acme/web")  # nothing active now
