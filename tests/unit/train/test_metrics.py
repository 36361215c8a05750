"""Metric writers: TensorBoard events read back with tensorboard's own reader, JSONL lines, resume."""

from __future__ import annotations

import json

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lmstream.train.metrics import (
    JsonlLogger,
    Logger,
    TensorBoardLogger,
    build_logger,
    format_metrics,
)


def _scalars(log_dir, tag):
    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def test_tensorboard_events_read_back(tmp_path):
    tb = TensorBoardLogger(tmp_path / "tb", flush_every=2)
    for step in (10, 20, 30):
        tb.log(step, {"loss": 5.0 - step / 10, "lr": 1e-3})
    tb.log(30, {"val_loss": 2.5, "val_ppl": 12.18})
    # flush_every=2: the first two logs are on disk before close.
    assert [s for s, _ in _scalars(tmp_path / "tb", "train/loss")][:2] == [10, 20]
    tb.close()
    assert _scalars(tmp_path / "tb", "train/loss") == [(10, 4.0), (20, 3.0), (30, 2.0)]
    assert _scalars(tmp_path / "tb", "val/loss") == [(30, 2.5)]
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    assert {"train/loss", "train/lr", "val/loss", "val/ppl"} <= set(acc.Tags()["scalars"])


def test_jsonl_one_object_per_line_and_resume_drops_later_steps(tmp_path):
    path = tmp_path / "metrics.jsonl"
    log = JsonlLogger(path)
    for step in (1, 2, 3, 4):
        log.log(step, {"loss": float(step), "lr": 0.1})
    log.log(4, {"val_loss": float("nan")})
    log.close()
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 4]
    assert records[-1]["val_loss"] is None  # NaN is not JSON
    with open(path, "a") as f:
        f.write('{"step": 5, "lo')  # torn line from a killed run
    resumed = JsonlLogger(path, resume_step=2)
    resumed.log(3, {"loss": 30.0})
    resumed.close()
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(r["step"], r["loss"]) for r in records] == [(1, 1.0), (2, 2.0), (3, 30.0)]


def test_only_rank_zero_writes(tmp_path, small_config):
    small_config.runtime.logging.tensorboard = tmp_path / "tb"
    small_config.runtime.logging.metrics_jsonl = tmp_path / "m.jsonl"
    other = build_logger(small_config, rank=1, total_steps=10)
    assert type(other) is Logger
    other.log(1, {"loss": 1.0})
    assert not (tmp_path / "tb").exists() and not (tmp_path / "m.jsonl").exists()
    main = build_logger(small_config, rank=0, total_steps=10, progress=False)
    main.log(1, {"loss": 1.0})
    main.close()
    assert json.loads((tmp_path / "m.jsonl").read_text()) == {"step": 1, "loss": 1.0}
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))


def test_stdout_line(capsys, small_config):
    logger = build_logger(small_config, rank=0, total_steps=100, progress=False)
    logger.log(50, {"loss": 3.21012, "lr": 1.8e-4, "tokens_per_s": 12345.6, "mfu": 0.412})
    logger.close()
    out = capsys.readouterr().out
    assert "step 50/100 | loss 3.2101 | lr 1.80e-04 | 12,346 tok/s | mfu 41.2%" in out
    assert format_metrics(3, None, {"skipped_steps": 0}) == "step 3"
