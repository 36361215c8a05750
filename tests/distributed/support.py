"""Helpers of the distributed tests: tiny configs, torchrun command lines, metrics readers.

Real `torchrun --standalone --nproc_per_node 2` jobs on the gloo backend, kept tiny for CI's two
cores: hidden 32, 2 layers, sequence 16, 20 steps, one intra-op thread per process (the same in
every process, so CPU fp32 arithmetic is deterministic and resumes compare bit for bit).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from tests.support.training import tiny_training_config

TOTAL = 20
JOB_TIMEOUT_S = 240  # a healthy job takes 15-25 s here; a hang must fail the test, not CI


def tiny_config(corpus: Path, **overrides) -> dict:
    """training.yaml for a 2-rank job (global batch 4 x 2 x 2 = 16 sequences); dotted keys
    override, e.g. ``**{"runtime.parallelism": "fsdp"}``."""
    return tiny_training_config(corpus, TOTAL, **{
        "model.hidden_size": 32,
        "model.intermediate_size": 64,
        "model.max_position_embeddings": 32,
        "model.residual_dropout": 0.1,  # dropout draws from each rank's RNG: it must resume too
        "data.gradient_accumulation_steps": 2,
        "data.sequence_length": 16,
        "data.validation_documents": 20,
        "data.shuffle_buffer_size": 64,
        "optimizer.weight_decay": 0.1,
        "scheduler.warmup_steps": 3,
        "runtime.device": "auto",
        "runtime.parallelism": "ddp",
        "runtime.checkpoint": {"every_n_steps": 10, "max_keep": 3},
        "runtime.evaluation": {"every_n_steps": 10, "max_batches": 2},
        "runtime.logging": {"tensorboard": "tb"},
        **overrides,
    })  # fmt: skip


def job_env() -> dict[str, str]:
    return {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "HF_DATASETS_OFFLINE": "1",
        "HF_HUB_OFFLINE": "1",
    }


def hub_job_env(hub_url: str, hf_home: Path) -> dict[str, str]:
    """job_env() for a job that streams from the loopback Hub stand-in at ``hub_url``: online,
    no token, a fresh HF_HOME (no cache of an earlier test), no telemetry."""
    env = {k: v for k, v in job_env().items()
           if k not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_TOKEN")}  # fmt: skip
    return env | {"HF_ENDPOINT": hub_url, "HF_HOME": str(hf_home), "HF_HUB_DISABLE_TELEMETRY": "1"}


def write_hub_streaming_config(run_dir: Path, hub_id: str) -> None:
    """The streaming_config.json orchestrate writes for a Hub dataset streamed without end."""
    streaming = {"version": 1, "streaming": True, "dataset": hub_id, "max_samples": None}
    (run_dir / "streaming_config.json").write_text(json.dumps(streaming))


def torchrun_args(*args: str, nproc: int = 2, console_script: bool = False) -> list[str]:
    """``torchrun --standalone --nproc_per_node N -m lmstream ARGS`` (or the console script)."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    launcher += ["--nproc_per_node", str(nproc)]
    if console_script:
        return [*launcher, str(Path(sys.executable).parent / "lmstream"), *args]
    return [*launcher, "-m", "lmstream", *args]


def start_job(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        torchrun_args(*args, **kwargs),
        env=job_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # the test can signal torchrun's whole group if it must
    )


def run_job(*args: str, **kwargs) -> subprocess.CompletedProcess:
    """Run a torchrun job to its end; returns the completed process (output in .stdout)."""
    return subprocess.run(
        torchrun_args(*args, **kwargs),
        env=job_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=JOB_TIMEOUT_S,
    )


def metrics(run_dir: Path, key: str = "loss") -> dict[int, float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r[key] for r in records if key in r}


def wait_for_step(run_dir: Path, proc: subprocess.Popen, step: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"job ended early:\n{proc.stdout.read()}"
        path = run_dir / "metrics.jsonl"
        if path.exists() and any(s >= step for s in _logged_steps(path)):
            return
        time.sleep(0.02)
    raise AssertionError(f"step {step} not reached in {timeout}s")


def _logged_steps(path: Path) -> list[int]:
    steps = []
    for line in path.read_text().splitlines():
        try:
            steps.append(json.loads(line)["step"])
        except (json.JSONDecodeError, KeyError):
            continue  # a line being written
    return steps
