"""runtime.micro_batch: the fastest micro-batch that fits, same global batch, chosen once.

The YAML's ``batch_size x gradient_accumulation_steps`` rows per rank and step stay exactly
what it says; only how they are cut into forward/backward passes changes. The loader still
yields ``batch_size`` rows at a time and :func:`regroup` concatenates a step's rows in order
and cuts them again, so every step trains on the same rows in the same order and the loss is
the same mean over the same tokens: numerics change only by float summation order (and
dropout masks, drawn per micro-batch).

The choice is measured once at start-up on synthetic tokens (a warm-up and two timed passes per
candidate; the RNG is restored after, so training draws what it would have), cached per run
folder, model and device in RUN/checkpoints/micro_batch.json, and recorded in each checkpoint:
a resume uses the checkpoint's value, so it continues bit-exactly.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path

import torch

from lmstream import distributed as dist
from lmstream.data.packing import Batch
from lmstream.train.device_defaults import on_for
from lmstream.train.memory_plan import GB, plan_memory
from lmstream.train.state import capture_rng, restore_rng

CACHE_NAME = "micro_batch.json"
TIMED_PASSES = 2


def regroup(micro: list[Batch], size: int) -> list[Batch]:
    """The step's rows, in order, cut into micro-batches of ``size`` rows. Steps at a pass's
    end (idle batches, rows of several epochs) are left as the loader made them: the
    loss's per-batch weights would otherwise mix."""
    if not micro or size == micro[0].inputs.shape[0]:
        return micro
    first = micro[0]
    if any(b.weight != first.weight or b.epoch != first.epoch for b in micro):
        return micro
    inputs = torch.cat([b.inputs for b in micro])
    targets = torch.cat([b.targets for b in micro])
    if inputs.shape[0] % size:
        return micro
    return [
        Batch(x, y, first.epoch, first.weight)
        for x, y in zip(inputs.split(size), targets.split(size), strict=True)
    ]


def candidates(rows: int) -> list[int]:
    """Micro-batch sizes that cut ``rows`` evenly, smallest first."""
    return [m for m in range(1, rows + 1) if rows % m == 0]


def wanted(setting: str | None, device: torch.device) -> bool:
    """Whether runtime.micro_batch asks for the search on ``device`` (null = auto on CUDA)."""
    return on_for("auto", device) if setting is None else setting == "auto"


def memory_limit(run) -> float | None:
    """Bytes the search may plan for: runtime.memory_limit_gb, else 90% of the GPU."""
    rt = run.cfg.runtime
    if rt.memory_limit_gb is not None:
        return rt.memory_limit_gb * GB
    if run.env.device.type == "cuda":
        return 0.9 * torch.cuda.get_device_properties(run.env.device).total_memory
    return None


def cache_key(run) -> str:
    """What the measurement depends on: model, shapes, precision, wrapping and the device."""
    cfg, dev = run.cfg, run.env.device
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    rt = cfg.runtime
    parts = [
        cfg.model.model_dump_json(), cfg.data.sequence_length, _rows(cfg), rt.precision,
        rt.compile, rt.chunked_loss, rt.activation_checkpointing, run.strategy,
        run.env.world_size, name, rt.memory_limit_gb, torch.__version__,
    ]  # fmt: skip
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:16]


def _rows(cfg) -> int:
    return cfg.data.batch_size * cfg.data.gradient_accumulation_steps


def resolve(run, say: Callable[[str], None], forward_backward) -> int:
    """The micro-batch size for this run (``data.batch_size`` unless the search is on), said in
    one line when it differs or was measured."""
    cfg = run.cfg
    rows, batch = _rows(cfg), cfg.data.batch_size
    if not wanted(cfg.runtime.micro_batch, run.env.device):
        return batch
    if run.micro_batch is not None:  # the checkpoint's: the resumed run continues bit-exactly
        say(f"micro-batch {_cut(run.micro_batch, rows)} (as in the checkpoint)")
        return run.micro_batch
    cache = Path(cfg.runtime.checkpoint.directory) / CACHE_NAME
    key = cache_key(run)
    known = _read_cache(cache).get(key)
    if isinstance(known, dict) and known.get("micro_batch") in candidates(rows):
        say(f"{known['line']} (measured before, {cache})")
        return known["micro_batch"]
    size, line = measure(run, forward_backward, memory_limit(run))
    say(line)
    if run.env.is_main:
        cache.parent.mkdir(parents=True, exist_ok=True)
        entries = _read_cache(cache) | {key: {"micro_batch": size, "line": line}}
        tmp = cache.with_suffix(".tmp")
        tmp.write_text(json.dumps(entries, indent=1))
        tmp.replace(cache)
    return size


def _read_cache(path: Path) -> dict:
    try:
        entries = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # none yet, or a damaged one: measure again
    return entries if isinstance(entries, dict) else {}  # JSON, but not ours


def _cut(size: int, rows: int) -> str:
    return f"{size} x {rows // size}"


def measure(run, forward_backward, limit: float | None) -> tuple[int, str]:
    """(size, one line): each candidate the memory plan admits is timed; on CUDA its measured
    peak must fit too (an out-of-memory ends the search: larger ones will not fit either).
    Every rank measures the same candidates in step (DDP/FSDP collectives run in backward);
    rank 0's choice is taken."""
    cfg = run.cfg
    rows, batch = _rows(cfg), cfg.data.batch_size
    chunked = getattr(_inner(run.model), "loss_chunk_tokens", 0) > 0
    n = sum(p.numel() for p in run.model.parameters())  # a DTensor counts its global shape
    results: dict[int, tuple[float, float, bool]] = {}  # size -> (s per row, peak, fits)
    rng = capture_rng()
    gen = torch.Generator().manual_seed(0)
    with _fixed_shapes():
        for m in candidates(rows):
            plan = plan_memory(cfg, n, m, run.env.world_size, run.strategy == "fsdp", chunked)
            over = limit is not None and plan.total > limit
            if over and m > batch:
                break  # larger ones plan larger still
            if over and m != batch:
                continue  # the written size is measured whatever the plan says
            try:
                seconds, peak = _time(run, forward_backward, m, gen)
            except torch.OutOfMemoryError:
                run.optimizer.zero_grad(set_to_none=True)
                torch.cuda.empty_cache()
                break
            peak = peak if peak is not None else plan.total  # CPU: no allocator peak
            results[m] = (seconds / m, peak, limit is None or peak <= limit)
    restore_rng(rng)
    if run.env.device.type == "cuda":  # the run's logged peak is its own, not the search's
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(run.env.device)
    timings = dist.broadcast_object(results if run.env.is_main else None)
    fitting = [m for m in timings if timings[m][2]] or [batch]
    best = min(fitting, key=lambda m: timings[m][0] if m in timings else 0.0)
    if batch in fitting and timings[batch][0] <= 1.03 * timings[best][0]:
        best = batch  # within noise of the written size: keep it
    peak_gb = timings[best][1] / GB if best in timings else float("nan")
    if best == batch:
        return best, f"micro-batch {_cut(best, rows)} as written ({peak_gb:.1f} GB peak)"
    if batch in fitting:
        speed = f"{timings[batch][0] / timings[best][0]:.2f}x faster"
    else:  # measured (it always is) but over the limit: how fast it ran does not matter
        speed = "the written size does not fit"
    return best, (
        f"micro-batch {_cut(best, rows)} instead of {_cut(batch, rows)}: {speed}, "
        f"{peak_gb:.1f} GB peak"
    )


def _time(run, forward_backward, m: int, gen: torch.Generator) -> tuple[float, float | None]:
    """Seconds of one forward/backward of ``m`` synthetic rows, and the CUDA peak (None on CPU)."""
    cfg, device = run.cfg, run.env.device
    vocab, T = cfg.model.vocab_size, cfg.data.sequence_length
    tokens = torch.randint(0, vocab, (m, T + 1), generator=gen)
    batch = Batch.from_rows(tokens)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    forward_backward(run.model, [batch], run.precision, device)  # warm-up (and compile)
    if cuda:
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(TIMED_PASSES):
        forward_backward(run.model, [batch], run.precision, device)
    if cuda:
        torch.cuda.synchronize(device)
    seconds = (time.perf_counter() - start) / TIMED_PASSES
    run.optimizer.zero_grad(set_to_none=True)
    return seconds, torch.cuda.max_memory_allocated(device) if cuda else None


def _inner(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "module", model)  # DDP wraps; FSDP2 shards in place


@contextlib.contextmanager
def _fixed_shapes():
    """Under torch.compile, each candidate compiles for its own shape rather than making the
    batch dimension dynamic for the run that follows; the graphs are dropped after."""
    try:
        import torch._dynamo as dynamo
    except ImportError:  # pragma: no cover - torch without dynamo
        yield
        return
    saved = dynamo.config.automatic_dynamic_shapes
    dynamo.config.automatic_dynamic_shapes = False
    try:
        yield
    finally:
        dynamo.config.automatic_dynamic_shapes = saved
        dynamo.reset()
