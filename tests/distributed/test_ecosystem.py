"""The integrations under a real 2-rank FSDP job (gloo): in-loop harness tasks run on rank 0
from the gathered weights (the same scores `lmstream eval --tasks` gives for the sharded
checkpoint), W&B writes one run, and nothing hangs."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from tests.distributed.support import JOB_TIMEOUT_S, TOTAL, job_env, metrics, torchrun_args
from tests.support.harness_task import TASK, write_task
from tests.support.training import write_run

from lmstream.cli import main as cli_main

pytest.importorskip("lm_eval")
pytest.importorskip("wandb")

pytestmark = [pytest.mark.distributed, pytest.mark.slow]


def test_fsdp_job_with_harness_tasks_and_wandb(corpus: Path, tmp_path: Path, capsys) -> None:
    from tests.distributed.support import tiny_config

    tasks = write_task(tmp_path / "tasks")
    cfg = tiny_config(
        corpus,
        **{
            "runtime.parallelism": "fsdp",
            "runtime.evaluation.tasks": [TASK],
            "runtime.evaluation.tasks_limit": 4,
            "runtime.evaluation.tasks_include_path": str(tasks),
            "runtime.logging.wandb": {"project": "lmstream-test", "mode": "offline"},
        },
    )
    run_dir = tmp_path / "run"
    env = job_env() | {"WANDB_DIR": str(tmp_path), "WANDB_SILENT": "true"}
    env |= {"WANDB_CONFIG_DIR": str(tmp_path / "wandb-config"), "WANDB_MODE": "offline"}
    env.pop("WANDB_API_KEY", None)
    done = subprocess.run(
        torchrun_args("train", "--config", str(write_run(run_dir, cfg))),
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        timeout=JOB_TIMEOUT_S,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout
    assert "warning" not in done.stdout

    acc = metrics(run_dir, f"eval/{TASK}/acc")
    assert sorted(acc) == [10, TOTAL]  # each evaluation, once (rank 0)
    assert len(list((tmp_path / "wandb").glob("offline-run-*"))) == 1  # rank 0's run only

    # The sharded final checkpoint through the CLI scores what the loop logged for it.
    checkpoint = run_dir / "checkpoints" / f"step-{TOTAL:08d}"
    args = ["eval", "--checkpoint", str(checkpoint), "--tasks", TASK, "--limit", "4"]
    assert cli_main([*args, "--include-path", str(tasks), "--device", "cpu", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["tasks"][TASK]["acc"] == acc[TOTAL]
    assert os.path.isfile(checkpoint / "eval_results.json")


def test_ranks_wait_out_in_loop_tasks_longer_than_the_process_group_timeout(
    corpus: Path, tmp_path: Path
) -> None:
    """Rank 0 runs the harness alone while the others wait: a benchmark longer than the process
    group's timeout (LMSTREAM_DIST_TIMEOUT_S, 600 s by default; a full MMLU on a big model
    takes longer) must not time the waiting ranks out and end the job. Here the timeout is 4 s
    and the harness's generation task takes well over it (about 15 s on two busy cores)."""
    from tests.distributed.support import tiny_config
    from tests.support.harness_task import write_generation_task

    tasks = tmp_path / "tasks"
    task = write_generation_task(tasks, repeats=40)
    cfg = tiny_config(
        corpus,
        **{
            "scheduler.total_steps": 4,
            "scheduler.warmup_steps": 1,
            "runtime.checkpoint.every_n_steps": 4,
            "runtime.evaluation.every_n_steps": 4,
            "runtime.evaluation.tasks": [task],
            "runtime.evaluation.tasks_include_path": str(tasks),
        },
    )
    run_dir = tmp_path / "run"
    done = subprocess.run(
        torchrun_args("train", "--config", str(write_run(run_dir, cfg))),
        env=job_env() | {"LMSTREAM_DIST_TIMEOUT_S": "4"}, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, timeout=JOB_TIMEOUT_S,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:]
    assert sorted(metrics(run_dir, f"eval/{task}/exact_match")) == [4]
