"""W&B (offline) and Trackio (local) receive what metrics.jsonl holds, read back with each
library's own format; --resume continues the same W&B run; a failing tracker never stops a run;
a config asking for a missing package is one line naming the field and the extra."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from tests.support.training import (
    tiny_training_config,
    train_in_process,
    write_kjv_corpus,
    write_run,
)

# Trackio reads TRACKIO_DIR once, when it is first imported (importorskip imports it): point it
# at a scratch folder first, so that this process, which reads the runs back, and the training
# processes, which write them, use the same folder and never the user's ~/.cache.
if "TRACKIO_DIR" not in os.environ:
    os.environ["TRACKIO_DIR"] = tempfile.mkdtemp(prefix="lmstream-test-trackio-")
    atexit.register(shutil.rmtree, os.environ["TRACKIO_DIR"], True)

wandb = pytest.importorskip("wandb")
pytest.importorskip("trackio")

pytestmark = pytest.mark.slow


def train(config: Path, *extra: str) -> subprocess.CompletedProcess:
    """`lmstream train` in its own process, as users run it: a tracker library that keeps the
    process alive after training (an exit handler waiting on a thread or a server) fails here
    instead of hanging whatever ran it."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    try:
        return subprocess.run(
            [sys.executable, "-m", "lmstream", "train", "--config", str(config), *extra],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(
            f"lmstream train did not exit within 300 s; output:\n{exc.stdout}\n{exc.stderr}"
        )


def trained(config: Path, *extra: str) -> str:
    """Run `lmstream train`, require exit 0, return its stderr."""
    proc = train(config, *extra)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stderr


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_kjv_corpus(tmp_path_factory.mktemp("corpus"), 120, 300)


@pytest.fixture
def wandb_env(tmp_path: Path, monkeypatch) -> Path:
    """W&B files under tmp_path; no server, no key, no user settings."""
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-dir"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    (tmp_path / "wandb-dir").mkdir()
    return tmp_path / "wandb-dir"


def jsonl_by_step(run_dir: Path) -> dict[int, dict]:
    """metrics.jsonl merged per step (a step with an evaluation has two lines), nulls left out."""
    merged: dict[int, dict] = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        step = record.pop("step")
        merged.setdefault(step, {}).update({k: v for k, v in record.items() if v is not None})
    return merged


def wandb_records(path: Path) -> list:
    """The records of an offline run's .wandb file: W&B's log format (LevelDB's: 32 KiB blocks
    of chunks with a 7-byte header) holding wandb's own protobuf Record messages."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    block, pos, pending, records = 32768, 7, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if length == 0 and kind == 0:
            pos += left
            continue
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST: a whole record
            record = pb.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def wandb_runs(wandb_dir: Path) -> list[tuple[str, dict[int, dict]]]:
    """(run id, history by step) of each offline run, oldest first."""
    out = []
    for folder in sorted((wandb_dir / "wandb").glob("offline-run-*")):
        run_id, history = None, {}
        for record in wandb_records(next(folder.glob("run-*.wandb"))):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                run_id = record.run.run_id
            elif kind == "history":
                row = {
                    item.key or "/".join(item.nested_key): json.loads(item.value_json)
                    for item in record.history.item
                }
                row = {k: v for k, v in row.items() if not k.startswith("_")}
                history.setdefault(row.pop("step"), {}).update(row)
        out.append((run_id, history))
    return out


def trackio_by_step(project: str, name: str) -> dict[int, dict]:
    from trackio.sqlite_storage import SQLiteStorage

    merged: dict[int, dict] = {}
    for row in SQLiteStorage.get_logs(project, name):
        step = row.pop("step")
        row.pop("timestamp", None)
        merged.setdefault(step, {}).update({k: v for k, v in row.items() if v is not None})
    return merged


def test_wandb_and_trackio_get_the_jsonl_metrics_and_resume_continues_the_wandb_run(
    corpus: Path, tmp_path: Path, wandb_env: Path
) -> None:
    project = f"lmstream-{tmp_path.name}"
    trackers = {
        "runtime.logging.wandb": {"project": "lmstream-test", "name": "tiny", "mode": "offline"},
        "runtime.logging.trackio": {"project": project, "name": "tiny"},
        "runtime.evaluation.every_n_steps": 2,
    }
    run_dir = tmp_path / "run"
    first_cfg = tiny_training_config(
        corpus, 4, **trackers, **{"runtime.checkpoint.every_n_steps": 2}
    )
    err = trained(write_run(run_dir, first_cfg))
    # Resumed from step 2, as after a crash past the last checkpoint: steps 3-4 are logged again.
    resume_from = str(run_dir / "checkpoints" / "step-00000002")
    err += trained(
        write_run(run_dir, tiny_training_config(corpus, 6, **trackers)),
        "--resume",
        resume_from,
        "--rollback",  # step 4 exists: going back to step 2 is a rollback
    )
    assert "warning" not in err

    expected = jsonl_by_step(run_dir)
    assert sorted(expected) == [1, 2, 3, 4, 5, 6]
    assert {"loss", "lr", "val_loss", "tokens_seen"} <= expected[4].keys()

    runs = wandb_runs(wandb_env)
    assert len(runs) == 2 and runs[0][0] == runs[1][0]  # the resumed run is the same W&B run
    first, second = runs[0][1], runs[1][1]
    assert sorted(first) == [1, 2, 3, 4] and sorted(second) == [3, 4, 5, 6]
    assert {**first, **second} == expected  # the resumed run's values win, as in metrics.jsonl

    assert trackio_by_step(project, "tiny") == expected


def test_a_failing_tracker_warns_once_and_training_goes_on(
    corpus: Path, tmp_path: Path, wandb_env: Path, monkeypatch
) -> None:
    # Online with no API key and an unreachable server: wandb.init refuses, as for a bad key.
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
    # Trackio's database path taken by a folder: its writes fail (Trackio itself warns and
    # carries on, by design).
    project = f"broken-{tmp_path.name}"
    (Path(os.environ["TRACKIO_DIR"]) / f"{project}.db").mkdir(parents=True)
    cfg = tiny_training_config(
        corpus,
        3,
        **{
            "runtime.logging.wandb": {"project": "p", "mode": "online"},
            "runtime.logging.trackio": {"project": project},
        },
    )
    run_dir = tmp_path / "run"
    err = trained(write_run(run_dir, cfg))
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert warnings == [
        "warning: W&B start failed (UsageError: No API key configured. Use `wandb login` to "
        "log in.); training goes on without W&B"
    ]
    assert sorted(jsonl_by_step(run_dir)) == [1, 2, 3]
    assert (run_dir / "checkpoints" / "step-00000003").is_dir()


@pytest.mark.parametrize(
    ("field", "module", "section"),
    [("wandb", "wandb", {"project": "p"}), ("trackio", "trackio", {"project": "p"})],
)
def test_a_missing_tracker_package_is_one_line_naming_field_and_extra(
    corpus: Path, tmp_path: Path, monkeypatch, capsys, field: str, module: str, section: dict
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # what `import` sees without the package
    cfg = tiny_training_config(corpus, 2, **{f"runtime.logging.{field}": section})
    assert train_in_process(write_run(tmp_path / "run", cfg)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"lmstream train: error: runtime.logging.{field}: the {module} package is not "
        f"installed; pip install 'lmstream[{field}]'"
    ]
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_resume_while_wandb_is_down_keeps_the_run_id_for_the_next_resume(
    corpus: Path, tmp_path: Path, wandb_env: Path, monkeypatch
) -> None:
    """W&B failing on one resume (no network, key expired) must not lose the run id from the
    checkpoints that resume writes: the next resume, with W&B back, continues the same W&B run
    instead of starting a new one."""
    wandb_cfg = {"runtime.logging.wandb": {"project": "p", "name": "tiny", "mode": "offline"}}
    every = {"runtime.checkpoint.every_n_steps": 2}
    run_dir = tmp_path / "run"
    trained(write_run(run_dir, tiny_training_config(corpus, 2, **wandb_cfg, **every)))

    monkeypatch.setenv("WANDB_MODE", "online")  # W&B down: init refuses (no key, no server)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
    down = {"runtime.logging.wandb": {"project": "p", "name": "tiny", "mode": "online"}}
    config = write_run(run_dir, tiny_training_config(corpus, 4, **down, **every))
    err = trained(config, "--resume", str(run_dir / "checkpoints" / "step-00000002"))
    assert "W&B start failed" in err

    monkeypatch.setenv("WANDB_MODE", "offline")  # W&B back
    config = write_run(run_dir, tiny_training_config(corpus, 5, **wandb_cfg, **every))
    trained(config, "--resume", str(run_dir / "checkpoints" / "step-00000004"))

    runs = wandb_runs(wandb_env)
    assert len(runs) == 2 and runs[0][0] == runs[1][0]
    assert sorted(runs[1][1]) == [5]
