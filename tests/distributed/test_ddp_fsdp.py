"""DDP and FSDP2 under real 2-process torchrun jobs (gloo): training, parity with one process,
checkpoint formats, exact resume, consolidation for generate, and the world-size check."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tests.distributed.support import TOTAL, job_env, metrics, run_job, tiny_config
from tests.support.training import write_run

from lmstream.cli import main as cli_main
from lmstream.train import checkpoint as ckpt

pytestmark = [pytest.mark.distributed, pytest.mark.slow]
MID = f"step-{TOTAL // 2:08d}"
END = f"step-{TOTAL:08d}"


@pytest.fixture(scope="module")
def jobs(corpus, tmp_path_factory) -> dict[str, Path]:
    """Three uninterrupted runs of the same global batch (16 sequences per step): DDP and FSDP
    on 2 ranks (FSDP through the console script), and 1 process with twice the accumulation."""
    root = tmp_path_factory.mktemp("dist-jobs")
    runs = {
        "ddp": (tiny_config(corpus), {}),
        "fsdp": (tiny_config(corpus, **{"runtime.parallelism": "fsdp"}), {"console_script": True}),
    }
    out = {}
    for name, (cfg, kwargs) in runs.items():
        config = write_run(root / name, cfg)
        done = run_job("train", "--config", str(config), **kwargs)
        assert done.returncode == 0, done.stdout
        (root / name / "stdout.txt").write_text(done.stdout)
        out[name] = root / name
    one = write_run(root / "one", tiny_config(corpus, **{"data.gradient_accumulation_steps": 4}))
    cmd = [sys.executable, "-m", "lmstream", "train", "--config", str(one)]
    done = subprocess.run(cmd, env=job_env(), capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    out["one"] = root / "one"
    return out


@pytest.mark.parametrize("name", ["ddp", "fsdp"])
def test_trains_on_two_ranks_rank0_writes(jobs, name):
    run_dir = jobs[name]
    losses = metrics(run_dir)
    assert sorted(losses) == list(range(1, TOTAL + 1))  # one record per step: only rank 0 logs
    assert losses[TOTAL] < losses[1] - 0.3
    assert len(list((run_dir / "tb").glob("events.out.tfevents.*"))) == 1
    stdout = (run_dir / "stdout.txt").read_text()
    assert stdout.count("global batch: 16 sequences") == 1
    assert f"world size 2; {name} over 2 ranks (gloo)" in stdout


def test_fsdp_matches_ddp(jobs):
    """Same data, same init, same arithmetic up to reduction order."""
    ddp, fsdp = metrics(jobs["ddp"]), metrics(jobs["fsdp"])
    for step in ddp:
        assert fsdp[step] == pytest.approx(ddp[step], rel=1e-4), step
    assert metrics(jobs["fsdp"], "val_loss") == pytest.approx(
        metrics(jobs["ddp"], "val_loss"), rel=1e-4
    )


def test_two_ranks_match_one_rank(jobs):
    """Same global batch: 2 ranks x 2 micro-batches vs 1 rank x 4. The ranks read disjoint
    halves of the stream, so the batches differ; the curves must agree closely."""
    one, two = metrics(jobs["one"]), metrics(jobs["ddp"])
    for step in one:
        assert two[step] == pytest.approx(one[step], rel=0.03), step
    late = range(TOTAL // 2 + 1, TOTAL + 1)
    mean_one = sum(one[s] for s in late) / len(late)
    mean_two = sum(two[s] for s in late) / len(late)
    assert mean_two == pytest.approx(mean_one, rel=0.01)
    val_one, val_two = metrics(jobs["one"], "val_loss"), metrics(jobs["ddp"], "val_loss")
    assert val_two[TOTAL] == pytest.approx(val_one[TOTAL], rel=0.01)


def test_checkpoint_formats(jobs):
    plain = jobs["ddp"] / "checkpoints" / END
    assert (plain / ckpt.MODEL_FILE).is_file() and not ckpt.is_sharded(plain)
    trainer = ckpt.load_trainer_state(plain)
    assert trainer["world_size"] == 2
    assert [d["rank"] for d in trainer["data"]] == [0, 1]  # every rank's data position
    assert len(trainer["rng"]) == 2

    sharded = jobs["fsdp"] / "checkpoints" / END
    manifest = ckpt.verify_checkpoint(sharded, check_hashes=True)
    assert manifest["format"] == "sharded" and manifest["world_size"] == 2
    assert {"sharded/.metadata", "sharded/__0_0.distcp", "sharded/__1_0.distcp"} <= set(
        manifest["files"]
    )
    assert ckpt.is_sharded(sharded) and not (sharded / ckpt.MODEL_FILE).exists()
    trainer = ckpt.load_trainer_state(sharded)
    assert [d["rank"] for d in trainer["data"]] == [0, 1]
    assert "optimizer" not in trainer  # it lives in the shards
    assert not list((jobs["fsdp"] / "checkpoints").glob(".tmp-*"))


@pytest.mark.parametrize("name", ["ddp", "fsdp"])
def test_resume_is_exact(jobs, name, tmp_path):
    """Resume the step-10 checkpoint in a new run folder: steps 11-20 and the final weights
    equal the uninterrupted run's, bit for bit."""
    reference = jobs[name]
    config = tmp_path / "training.yaml"
    shutil.copyfile(reference / "training.yaml", config)
    mid = reference / "checkpoints" / MID
    done = run_job("train", "--config", str(config), "--resume", str(mid))
    assert done.returncode == 0, done.stdout
    assert f"resumed from {mid} at step {TOTAL // 2}" in done.stdout
    got, want = metrics(tmp_path), metrics(reference)
    assert sorted(got) == list(range(TOTAL // 2 + 1, TOTAL + 1))
    assert all(got[s] == want[s] for s in got), (got, want)
    a, _ = ckpt.load_model_state(tmp_path / "checkpoints" / END)
    b, _ = ckpt.load_model_state(reference / "checkpoints" / END)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_consolidated_fsdp_checkpoint_generates(jobs, tmp_path, capsys):
    sharded = jobs["fsdp"] / "checkpoints" / END
    assert cli_main(["consolidate", "--checkpoint", str(sharded), "--out", str(tmp_path)]) == 0
    folder = tmp_path / END
    ckpt.verify_checkpoint(folder, check_hashes=True)
    weights = load_file(str(folder / ckpt.MODEL_FILE))
    in_memory, _ = ckpt.load_model_state(sharded)
    assert all(torch.equal(weights[k], in_memory[k]) for k in in_memory)
    ddp, _ = ckpt.load_model_state(jobs["ddp"] / "checkpoints" / END)
    assert weights.keys() == ddp.keys()
    assert all(torch.allclose(weights[k], ddp[k], atol=1e-4) for k in ddp)
    capsys.readouterr()
    for source in (folder, sharded):  # generate reads both the consolidated and the shards
        args = ["generate", "--checkpoint", str(source), "--prompt", "And God"]
        assert cli_main([*args, "--max-new-tokens", "8", "--temperature", "0"]) == 0
    out = capsys.readouterr().out
    texts = [line for line in out.splitlines() if line.startswith("And God")]
    assert len(texts) == 2 and texts[0] == texts[1] and len(texts[0]) > len("And God")


@pytest.mark.parametrize("name", ["ddp", "fsdp"])
def test_fewer_ranks_refused(jobs, name, tmp_path, capsys):
    config = tmp_path / "training.yaml"
    shutil.copyfile(jobs[name] / "training.yaml", config)
    mid = jobs[name] / "checkpoints" / MID
    rc = cli_main(["train", "--config", str(config), "--resume", str(mid)])
    err = capsys.readouterr().err
    assert rc == 4, err
    assert "written by 2 ranks (world size 2)" in err and "world size 1" in err
    assert not (tmp_path / "checkpoints").exists()


def test_more_ranks_refused(jobs, tmp_path):
    """A 1-process checkpoint resumed by 2 ranks: every rank refuses (none waits for another)."""
    config = tmp_path / "training.yaml"
    shutil.copyfile(jobs["one"] / "training.yaml", config)
    mid = jobs["one"] / "checkpoints" / MID
    done = run_job("train", "--config", str(config), "--resume", str(mid))
    assert done.returncode != 0
    for rank in (0, 1):
        assert f"rank {rank}: cannot resume: {mid} was written by 1 ranks" in done.stdout
    assert "this run has world size 2" in done.stdout
