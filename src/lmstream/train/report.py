"""What `lmstream train` tells the user before and after a run: the data it will read (and how
many epochs the plan implies), the device with a time estimate, a warning when a model is far
too large for a CPU, and the end-of-run summary with the next commands.

The time estimate is arithmetic, not a promise: training FLOPs per step (6N + 12*L*H*T per
token, PaLM appendix B) over a fp32 matmul rate measured on this device for a fraction of a
second, divided by the share of that rate a whole training step reaches (measured on a 2-core
CPU: the tiny preset trains at ~90 GFLOP/s where a 1024x1024 matmul runs at ~130).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from lmstream.config import TrainingConfig
from lmstream.train.setup import ends_by_epochs

STEP_EFFICIENCY = 0.6  # a training step's FLOP rate / a large fp32 matmul's (see above)
SLOW_STEP_S = 180.0  # on a CPU, a step slower than this gets the "use tiny" warning
SLOWEST_CPU_FLOPS = 1e9  # fp32 matmul FLOP/s below any CPU torch runs on (this 2-core one: ~130e9)
_SURVEY_DOCUMENTS = 20_000  # a local source is counted up to this many documents
_SAMPLE_DOCUMENTS = 200  # documents tokenized to measure tokens per character
HOLDOUT_SHARE_WARNING = 0.25


def resolve_device(name: str) -> torch.device:
    """runtime.device as training resolves it on one process (auto = cuda when available)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def measure_matmul_flops(device: torch.device, seconds: float = 0.3, size: int = 1024) -> float:
    """fp32 FLOP/s of a square matmul on ``device``, measured for about ``seconds``."""
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    a @ b  # warm-up: allocations, kernel selection
    done, start = 0, time.perf_counter()
    while True:
        a @ b
        done += 1
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if time.perf_counter() - start >= seconds:
            break
    return 2 * size**3 * done / (time.perf_counter() - start)


def flops_per_step(cfg: TrainingConfig, vocab_size: int, world_size: int = 1) -> float:
    """Training FLOPs of one optimizer step on one rank, from a model built on the meta device."""
    from lmstream.model.transformer import Transformer

    with torch.device("meta"):
        model = Transformer(cfg.model, vocab_size)
    return (
        model.flops_per_token(cfg.data.sequence_length)
        * cfg.tokens_per_step(world_size)
        / max(world_size, 1)
    )


def estimate_step_seconds(step_flops: float, matmul_flops: float) -> float:
    return step_flops / (matmul_flops * STEP_EFFICIENCY)


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.1f} min"
    if seconds < 3 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:,.0f} days"


def describe_time(cfg: TrainingConfig, vocab_size: int, total_steps: int | None) -> list[str]:
    """The device line and the time estimate (dry-run and start of training)."""
    device = resolve_device(cfg.runtime.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        # A GPU run planned on a machine without one: the plan stands, the rate cannot be had.
        return [
            f"device: {device} (runtime.device {cfg.runtime.device}) is not available on this "
            "machine; no time estimate (training here would stop at start)"
        ]
    rate = measure_matmul_flops(device)
    per_step = estimate_step_seconds(flops_per_step(cfg, vocab_size), rate)
    lines = [
        f"device: {device.type} (runtime.device {cfg.runtime.device}); fp32 matmul measured at "
        f"{rate / 1e9:,.0f} GFLOP/s"
    ]
    total = (
        f", {_duration(per_step * total_steps)} for {total_steps:,} steps" if total_steps else ""
    )
    lines.append(
        f"time estimate: ~{_duration(per_step)} per step{total} (FLOPs per step / "
        f"({STEP_EFFICIENCY:.0%} of the matmul rate); evaluation and checkpoints extra)"
    )
    return lines


def slow_cpu_warning(cfg: TrainingConfig, vocab_size: int, world_size: int = 1) -> str | None:
    """A warning when this run is on a CPU and one step would take more than a few minutes."""
    device = resolve_device(cfg.runtime.device)
    if device.type != "cpu":
        return None
    step_flops = flops_per_step(cfg, vocab_size, world_size)
    if estimate_step_seconds(step_flops, SLOWEST_CPU_FLOPS) <= SLOW_STEP_S:
        return None  # fast enough on any CPU: no matmul to time (0.2 s of every small run)
    # A quick matmul first: a model this large is obvious long before a careful measurement.
    rate = measure_matmul_flops(device, seconds=0.2)
    per_step = estimate_step_seconds(step_flops, rate)
    if per_step <= SLOW_STEP_S:
        return None
    return (
        f"warning: on this CPU one optimizer step of this model would take about "
        f"{_duration(per_step)} ({step_flops:.2e} FLOPs per step at the measured "
        f"{rate / 1e9:,.0f} GFLOP/s fp32 matmul rate); for a CPU run, write a CPU recipe with "
        "`lmstream orchestrate ... --model-size tiny`, or train on a GPU"
    )


# ---------------------------------------------------------------------------------- data


@dataclass
class DataSurvey:
    """What is known of the training data before training: counted when local, else not."""

    source: str
    max_samples: int | None
    documents: int | None  # None: not counted (a hub stream)
    complete: bool  # the count reached the end of the source
    tokens_per_document: float | None
    holdout: str  # how validation data is chosen
    holdout_documents: int  # documents held out of the training stream (0 with a split)
    share: float = 1.0  # of the planned tokens: a mixture's primary (the source described) only


def survey_data(
    cfg: TrainingConfig, run_dir: Path, tokenizer: Any, read: bool = True
) -> DataSurvey:
    """Describe and, for local sources (``read``), count the training data."""
    from lmstream.data.documents import resolve_plan

    plan = resolve_plan(cfg, Path(run_dir))
    survey = _survey(cfg, run_dir, tokenizer, read, plan)
    return replace(survey, share=_primary_share(cfg, Path(run_dir)))


def _primary_share(cfg: TrainingConfig, run_dir: Path) -> float:
    """The token weight of the source ``resolve_plan`` describes (1 for one source)."""
    from lmstream.data.documents import STREAMING_CONFIG
    from lmstream.data.mixture_plan import resolve_sources

    if cfg.data.mixture is None and not (run_dir / STREAMING_CONFIG).is_file():
        return 1.0
    return max(s.weight for s in resolve_sources(cfg, run_dir))


def _survey(cfg: TrainingConfig, run_dir: Path, tokenizer: Any, read: bool, plan) -> DataSurvey:
    from lmstream.data.documents import TextSource
    from lmstream.data.packing import encode_documents
    from lmstream.data.token_shards import TokenShards

    n_val = cfg.data.validation_documents
    if plan.kind == "tokens":
        shards = TokenShards(plan.token_paths)
        docs = len(shards)
        tokens = sum(len(shards.document(i)) for i in range(min(docs, _SAMPLE_DOCUMENTS)))
        holdout = "validation_shards" if plan.validation == "files" else "holdout"
        return DataSurvey(
            f"token shards {', '.join(plan.token_paths)}", None, docs, True,
            tokens / max(min(docs, _SAMPLE_DOCUMENTS), 1), holdout,
            n_val if holdout == "holdout" else 0,
        )  # fmt: skip
    spec = plan.spec
    source = spec.path + (f" (subset {spec.subset})" if spec.subset else "")
    if len(spec.data_files or ()) > 1:
        source += f" and {len(spec.data_files) - 1} more files"
    source += f", split {plan.split}"
    if plan.validation == "split":
        holdout, held = f"validation split {plan.validation_split!r}", 0
    elif plan.validation == "files":
        holdout, held = "data.validation_shards", 0
    else:
        holdout, held = "holdout", n_val
    local = spec.is_files and "://" not in spec.path
    if not (read and local):
        return DataSurvey(source, plan.max_samples, None, False, None, holdout, held)
    limit = (
        _SURVEY_DOCUMENTS if plan.max_samples is None else min(plan.max_samples, _SURVEY_DOCUMENTS)
    )
    reader = TextSource(spec, plan.split, max_samples=plan.max_samples)
    reader.open(0, None)
    sample = reader.read(_SAMPLE_DOCUMENTS)
    count = len(sample) + len(reader.read(max(limit - len(sample), 0))) if sample else 0
    complete = count < limit or (plan.max_samples is not None and count >= plan.max_samples)
    per_doc = None
    if sample:
        per_doc = sum(len(t) for t in encode_documents(tokenizer, sample)) / len(sample)
    return DataSurvey(source, plan.max_samples, count, complete, per_doc, holdout, held)


def describe_data(
    cfg: TrainingConfig, survey: DataSurvey, total_steps: int | None, world_size: int = 1
) -> str:
    """One line: source, max_samples, holdout, tokens available vs planned, epochs implied."""
    s = survey
    parts = [
        f"data: {s.source}",
        f"max_samples {s.max_samples:,}" if s.max_samples else "max_samples none",
    ]
    if s.holdout == "holdout":
        text = f"validation: the first {s.holdout_documents:,} documents held out of training"
        if s.documents and s.complete:
            share = s.holdout_documents / s.documents
            text += f" ({share:.0%} of the data"
            text += (
                ", a large share: lower data.validation_documents)"
                if share >= HOLDOUT_SHARE_WARNING
                else ")"
            )
        parts.append(text)
    else:
        parts.append(f"validation: {s.holdout}")
    planned = cfg.tokens_per_step(world_size) * total_steps if total_steps else None
    by_epochs = cfg.scheduler.total_epochs
    if s.documents is None:
        parts.append("tokens available: not counted (streamed)")
    else:
        train_docs = max(s.documents - s.holdout_documents, 0)
        tokens = train_docs * (s.tokens_per_document or 0)
        more = "" if s.complete else "at least "
        parts.append(f"tokens available: {more}~{_count(tokens)} in {more}{train_docs:,} documents")
        if planned and tokens and s.complete and not by_epochs:
            epochs = planned * s.share / tokens
            note = f"planned {_count(planned)}"
            if s.share < 1:  # a mixture's primary: only its weight's share of them
                note += f", {s.share:.0%} from this source"
            note += f" = {epochs:,.2f} epochs"
            if epochs > 1:
                note += f" ({_passes(epochs)})"
            parts.append(note)
    if planned and by_epochs:
        # The run ends after exactly that many passes; the token figures above are estimates
        # from the first documents, so an epochs figure derived from them would contradict it.
        parts.append(f"planned ~{_count(planned)} = {by_epochs:,} epoch{'s' * (by_epochs != 1)} "
                     "(scheduler.total_epochs)")  # fmt: skip
    elif planned and not (s.documents is not None and s.complete):
        parts.append(f"planned {_count(planned)}")
    return "; ".join(parts)


def _passes(epochs: float) -> str:
    """How often the run reads its data: "3 passes over the data, the last one partial" for
    2.03 epochs (a count of repeats would leave unclear whether the first read counts)."""
    whole = round(epochs)
    if abs(epochs - whole) < 0.005:
        return f"{whole:,} passes over the data"
    return f"{math.ceil(epochs):,} passes over the data, the last one partial"


def _count(n: float) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:,.2f}{unit} tokens"
    return f"{n:,.0f} tokens"


# ---------------------------------------------------------------------------------- summary


def read_losses(metrics_jsonl: Path, key: str) -> list[float]:
    """The values of ``key`` in metrics.jsonl, in order (lines of an interrupted write skipped)."""
    import json

    out = []
    if not Path(metrics_jsonl).is_file():
        return out
    for line in Path(metrics_jsonl).read_text(encoding="utf-8").splitlines():
        try:
            value = json.loads(line).get(key)
        except (json.JSONDecodeError, AttributeError):
            continue
        if value is not None:
            out.append(float(value))
    return out


def final_summary(run: Any, config_path: Path, seconds: float) -> str:
    """The end-of-run report: losses, tokens, time, where things are, what to run next."""
    cfg, st = run.cfg, run.state
    rt = cfg.runtime
    losses = read_losses(rt.logging.metrics_jsonl, "loss")
    vals = read_losses(rt.logging.metrics_jsonl, "val_loss")
    loss = (
        f"{losses[0]:.3f} -> {losses[-1]:.3f} (train, first and last logged)" if losses else "n/a"
    )
    best = f"; best validation loss {min(vals):.3f}" if vals else ""
    ckpts = rt.checkpoint.directory
    # A mixture planned in epochs ends with its last epoch, whose steps the first pass's only
    # estimate (run.total_steps): it is done there, however many steps that took.
    epochs = cfg.scheduler.total_epochs if ends_by_epochs(cfg, run.loader) else None
    finished = st.epoch >= epochs if epochs else st.step >= run.total_steps
    # the field that planned the run is the one to raise (total_steps is derived from epochs)
    plan = "total_epochs" if cfg.scheduler.total_epochs is not None else "total_steps"
    state = "done" if finished else "stopped"
    where = f"epoch {st.epoch} of {epochs}, step {st.step:,}" if epochs else (
        f"step {st.step:,} of {run.total_steps:,}")  # fmt: skip
    lines = [
        f"== {state}: {where} in {_duration(seconds)} ==",
        f"loss: {loss}{best}" + (f"; last validation loss {vals[-1]:.3f}" if vals else ""),
        f"tokens seen: {st.tokens_seen:,}",
        f"checkpoints: {ckpts}",
        f"best:        {rt.evaluation.best.directory}",
        f"metrics:     {rt.logging.metrics_jsonl}",
    ]
    if rt.logging.tensorboard:
        lines.append(f"tensorboard: {rt.logging.tensorboard}")
    lines += [
        "next:",
        f'  lmstream generate --checkpoint {ckpts} --prompt "Once upon a time"',
        f"  lmstream eval --checkpoint {ckpts}",
        f"  lmstream plot {Path(config_path).parent}",
        f"  lmstream export --checkpoint {ckpts} --out EXPORT_DIR",
        f"  lmstream train --config {config_path} --resume"
        + (f"    # after raising scheduler.{plan}" if finished else ""),
    ]
    return "\n".join(lines)
