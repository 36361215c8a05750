"""`lmstream train --config runs/EXP/training.yaml [--resume [PATH]] [--dry-run]`.

Thin on purpose (torchtitan's train.py): build, train, close, tear down the process group, even
on error. The work lives in lmstream.train.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import os
import sys
from pathlib import Path

from lmstream import collector
from lmstream.config import TrainingConfig, dump_training_config, load_training_config
from lmstream.errors import ConfigError, DataSourceError, LmstreamError
from lmstream.workspace import TRAINING_YAML

EXAMPLES = """examples:
  lmstream train --config workspace/runs/my-exp/training.yaml --dry-run
  lmstream train --config workspace/runs/my-exp/training.yaml
  lmstream train --config workspace/runs/my-exp/training.yaml --resume
  lmstream train --config workspace/runs/my-exp/training.yaml --resume workspace/runs/my-exp/checkpoints/step-00001500
  torchrun --nproc_per_node 8 -m lmstream train --config workspace/runs/my-exp/training.yaml
"""

_RESUME_NEWEST = "newest"

# glibc mallopt parameters (malloc.h). Why: every step allocates and frees buffers of a few MB
# (logits, activations, gradients); above glibc's mmap threshold each one is a fresh mmap whose
# pages fault in on first touch and go back to the kernel on free, so a CPU step spent several
# times more system CPU than needed (measured: ~6x). A 32 MiB mmap threshold keeps them on the
# heap, and a 1 GiB trim threshold with a 256 MiB top pad stop the heap from being returned and
# re-faulted every step. The same as MALLOC_MMAP_THRESHOLD_=33554432
# MALLOC_TRIM_THRESHOLD_=1073741824 MALLOC_TOP_PAD_=268435456; variables the user set win.
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_MALLOC_TUNING = {
    _M_MMAP_THRESHOLD: ("MALLOC_MMAP_THRESHOLD_", 32 * 2**20),
    _M_TRIM_THRESHOLD: ("MALLOC_TRIM_THRESHOLD_", 2**30),
    _M_TOP_PAD: ("MALLOC_TOP_PAD_", 256 * 2**20),
}


def register(sub: argparse._SubParsersAction, formatter: type) -> None:
    p = sub.add_parser(
        "train",
        help="train a model from training.yaml (streams when streaming_config.json is beside it)",
        description="Train a decoder-only transformer driven by training.yaml. When "
        "streaming_config.json sits beside the YAML, data is streamed from its source. "
        "SIGTERM/Ctrl-C saves a checkpoint and exits; a second one exits at once.",
        epilog=EXAMPLES,
        formatter_class=formatter,
    )
    p.add_argument("--config", required=True, type=Path, help="path to training.yaml")
    p.add_argument(
        "--resume",
        nargs="?",
        const=_RESUME_NEWEST,
        default=None,
        metavar="PATH",
        help="continue from the newest complete checkpoint in runtime.checkpoint.directory (or "
        "a newer best copy), or from PATH (a step-NNNNNNNN folder, a checkpoints folder or a run folder)",
    )
    p.add_argument(
        "--rollback",
        action="store_true",
        help="with --resume PATH of an older checkpoint: continue from it, moving the newer "
        "checkpoints, their best copies and later metrics into RUN/abandoned/<time>/",
    )
    p.add_argument(
        "--restart",
        action="store_true",
        help="start at step 0 in a run folder that holds checkpoints, moving them, best, "
        "metrics and TensorBoard logs into RUN/abandoned/<time>/ (nothing is deleted)",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="validate the config and print the plan (model size, FLOPs, schedule) without training",
    )
    # The collector stays paused through the imports and the build (lmstream.collector).
    p.set_defaults(func=run, ends_start_up=True)


def _vocab_size(cfg: TrainingConfig) -> tuple[int | None, str]:
    tok_path = cfg.tokenizer.tokenizer_json
    if tok_path is not None and Path(tok_path).is_file():
        from lmstream.tokenizer import load_tokenizer

        size = load_tokenizer(tok_path).get_vocab_size()
        if cfg.model.vocab_size is not None and cfg.model.vocab_size > size:
            return cfg.model.vocab_size, "model.vocab_size"
        return size, f"tokenizer {tok_path}"
    if cfg.model.vocab_size is not None:
        return cfg.model.vocab_size, "model.vocab_size (tokenizer file not found yet)"
    return None, "unknown: no tokenizer file yet and model.vocab_size is null"


def describe_model(cfg: TrainingConfig) -> list[str]:
    """Parameter count and FLOPs per token, from a model built on the meta device (no memory)."""
    import torch

    from lmstream.model.transformer import Transformer

    vocab, source = _vocab_size(cfg)
    if vocab is None:
        with torch.device("meta"):
            body = Transformer(cfg.model, 2)
        n = body.num_parameters(exclude_embeddings=True)
        return [f"model: {n:,} parameters without embeddings; vocabulary size {source}"]
    with torch.device("meta"):
        model = Transformer(cfg.model, vocab)
    flops = model.flops_per_token(cfg.data.sequence_length)
    return [
        f"model: {model.num_parameters():,} parameters "
        f"({model.num_parameters(exclude_embeddings=True):,} without embeddings), "
        f"vocabulary {vocab:,} ({source})",
        f"training FLOPs per token: {flops:.3e} (6N + 12*L*H*T); per optimizer step: "
        f"{flops * cfg.tokens_per_step():.3e}",
    ]


def describe_schedule(cfg: TrainingConfig) -> str:
    """Learning rates at a few steps, numbered as training logs them: step k (from 1) is the
    k-th optimizer step and uses the schedule's value at k - 1 updates done."""
    from lmstream.train.optim import make_schedule

    total = cfg.scheduler.total_steps
    if total is None:
        return "lr: the schedule's length is measured from one epoch at the start (total_epochs)"
    lr = make_schedule(cfg.scheduler, cfg.peak_lr, cfg.min_lr, total)
    warm = cfg.scheduler.warmup_steps
    points = {1, max(1, warm), min(warm + 1, total), total // 4, total // 2, 3 * total // 4, total}
    return "lr at step: " + ", ".join(f"{s:,}: {lr(s - 1):.3g}" for s in sorted(points) if s >= 1)


def describe_plan(cfg: TrainingConfig, world_size: int = 1) -> str:
    """The resolved plan as text: batch arithmetic, schedule, model size."""
    s, d = cfg.scheduler, cfg.data
    lines = [
        f"tokens per optimizer step: {cfg.tokens_per_step(world_size):,} "
        f"(batch_size {d.batch_size} x gradient_accumulation_steps {d.gradient_accumulation_steps} "
        f"x sequence_length {d.sequence_length} x world_size {world_size})",
        f"schedule: {s.strategy}, warmup {s.warmup_steps} steps, "
        + (f"total {s.total_steps:,} steps" if s.total_steps else f"total {s.total_epochs} epochs")
        + f", peak lr {cfg.peak_lr:g}, min lr {cfg.min_lr:g}",
    ]
    if s.total_steps:
        lines.append(f"planned tokens: {cfg.tokens_per_step(world_size) * s.total_steps:,}")
    lines.append(describe_schedule(cfg))
    lines.extend(describe_model(cfg))
    return "\n".join(lines)


def describe_data_and_time(cfg: TrainingConfig, run_dir: Path) -> list[str]:
    """The dry-run's device, data (counted when local), holdout and time estimate."""
    from lmstream.train import report

    vocab, _ = _vocab_size(cfg)
    lines = []
    tok_path = cfg.tokenizer.tokenizer_json
    if tok_path is not None and Path(tok_path).is_file():
        from lmstream.tokenizer import load_tokenizer

        survey = report.survey_data(cfg, run_dir, load_tokenizer(tok_path))
        lines.append(report.describe_data(cfg, survey, cfg.scheduler.total_steps))
    else:
        lines.append(f"data: not described (tokenizer {tok_path} not found)")
    if vocab is not None:
        lines.extend(report.describe_time(cfg, vocab, cfg.scheduler.total_steps))
    return lines


def tune_malloc() -> bool:
    """Keep per-step buffers on glibc's heap (see _MALLOC_TUNING); True when applied. A no-op
    off Linux/glibc. Host memory only, so harmless on GPU runs too (their host buffers are small);
    the resident heap may stay up to ~1 GiB above its low point instead of being trimmed."""
    import os

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False  # not glibc (e.g. musl): nothing to tune
    applied = False
    for param, (env_name, value) in _MALLOC_TUNING.items():
        if env_name not in os.environ:
            applied |= bool(mallopt(ctypes.c_int(param), ctypes.c_int(value)))
    return applied


def train(
    cfg: TrainingConfig,
    run_dir: Path,
    resume: str | None,
    *,
    restart: bool = False,
    rollback: bool = False,
    config_path: Path | None = None,
) -> int:
    """Build, train, close: the logger, the run folder's lock and the process group are
    released even on error."""
    from lmstream import distributed as dist
    from lmstream import failures
    from lmstream.train.run_folder import lock_run_folder

    tune_malloc()

    env = dist.init_distributed(cfg.runtime.device)
    clean, lock = False, None
    try:
        lock = lock_run_folder(run_dir, env)  # before anything is written
        result = _train(
            cfg, run_dir, resume, env, restart=restart, rollback=rollback, config_path=config_path
        )
        clean = True
        return result
    except Exception as err:
        # torch's SIGCHLD handler raises a dead worker's RuntimeError wherever the main process
        # is (model step, checkpoint write), outside the loader's own error handling.
        failure = failures.translate(err, distributed=env.is_distributed)
        if failure is None:
            raise
        raise failures.on_rank(failure, env) from None
    finally:
        if lock is not None:
            lock.release()
        dist.teardown(clean=clean)


def _train(
    cfg: TrainingConfig,
    run_dir: Path,
    resume: str | None,
    env,
    *,
    restart: bool,
    rollback: bool,
    config_path: Path | None = None,
) -> int:
    import time

    from lmstream.data.pinning import reading_at
    from lmstream.tokenizer import load_tokenizer
    from lmstream.train import report
    from lmstream.train.loop import Trainer
    from lmstream.train.metrics import Logger, build_logger
    from lmstream.train.run_folder import start_fresh
    from lmstream.train.setup import build_run, ends_by_epochs, resolve_vocab_size

    started = time.perf_counter()
    config_path = config_path or run_dir / TRAINING_YAML
    if env.is_main:  # before building: a model too large for this CPU takes minutes to build
        vocab = resolve_vocab_size(cfg, load_tokenizer(cfg.tokenizer.tokenizer_json))
        warning = report.slow_cpu_warning(cfg, vocab, env.world_size)
        if warning:
            print(warning, flush=True)
    logger = Logger()
    try:
        notice = None
        if resume == _RESUME_NEWEST:
            resume, notice = newest_saved(cfg)
        history = start_fresh(cfg, run_dir, env, restart) if resume is None else []
        resume_command = f"lmstream train --config {config_path} --resume"
        try:
            run = build_run(cfg, run_dir, env, resume, rollback=rollback)
        except DataSourceError as err:
            if resume is None:  # a fresh run: running the same command again is the next step
                raise
            # The source failed before the first step: the checkpoints are as they were.
            raise DataSourceError(f"{err}; then continue with `{resume_command}`") from None
        # Built: the rest of start-up (the data survey) reads data, and the loop makes garbage.
        collector.start_up_done()
        history += run.history
        resumed = run.resumed_from is not None
        logger = build_logger(
            run.cfg,
            rank=env.rank,
            total_steps=run.total_steps,
            resume_step=run.state.step if resumed else None,
            tracker_state=run.tracker_state,
            total_is_estimate=ends_by_epochs(run.cfg, run.loader),
        )
        logger.message(describe_parallelism(run))
        for pin in run.data_commits:
            logger.message(pin.line())
        if env.is_main:
            tokenizer = load_tokenizer(run.cfg.tokenizer.tokenizer_json)
            with reading_at(run.data_commits):  # the commits the loader reads, not the branch's
                survey = report.survey_data(run.cfg, run_dir, tokenizer)
            logger.message(report.describe_data(run.cfg, survey, run.total_steps, env.world_size))
        for line in [*env.notes, notice, *history]:
            if line:
                logger.message(line)
        if resumed:
            logger.message(f"resumed from {run.resumed_from} at step {run.state.step}")
            for change in run.notes:
                logger.message(f"config change since the checkpoint (allowed): {change}")
            for line in run.data_changes:
                logger.message(line)
        code = Trainer(run, logger, resume_command=resume_command).fit()
        if env.is_main:
            logger.message(report.final_summary(run, config_path, time.perf_counter() - started))
        return code
    finally:
        logger.close()


def newest_saved(cfg: TrainingConfig) -> tuple[str | None, str | None]:
    """What a plain ``--resume`` continues from (None: step 0), and a line to report.

    The newest complete checkpoint, unless a best copy is newer: best copies are full
    checkpoints saved at evaluation steps, which need not be checkpoint steps, so a run that
    ended after one would otherwise redo those steps (its best copy moved aside), or, with no
    checkpoint yet, be refused as a fresh start in a used folder. A newer best copy that fails
    its sha256 check is skipped, as a damaged checkpoint is (resume would refuse it by name)."""
    from lmstream.errors import CheckpointError
    from lmstream.train import checkpoint as ckpt

    directory, best = cfg.runtime.checkpoint.directory, cfg.runtime.evaluation.best.directory
    newest = ckpt.complete_checkpoints(directory)[-1:]
    newest_step = int(newest[0].name.split("-")[1]) if newest else -1
    copies = ckpt.complete_checkpoints(best) if best is not None else []
    for copy in reversed([c for c in copies if int(c.name.split("-")[1]) > newest_step]):
        try:
            ckpt.verify_checkpoint(copy, check_hashes=True)
        except CheckpointError as err:
            ckpt.log.warning("skipping best copy: %s; trying an older one", err)
            continue
        text = f"--resume: the best copy {copy} is newer than any checkpoint in {directory}"
        return str(copy), text
    if newest:
        return str(directory), None
    return None, f"--resume: no checkpoint in {directory} yet; starting at step 0"


def describe_parallelism(run) -> str:
    """The start-of-run line: global batch arithmetic, ranks, strategy and device."""
    d, world = run.cfg.data, run.env.world_size
    sequences = d.batch_size * d.gradient_accumulation_steps * world
    text = (
        f"global batch: {sequences:,} sequences of {d.sequence_length} tokens "
        f"({run.cfg.tokens_per_step(world):,} tokens) per step = batch_size {d.batch_size} x "
        f"gradient_accumulation_steps {d.gradient_accumulation_steps} x world size {world}"
    )
    if world > 1:
        backend = "nccl" if run.env.device.type == "cuda" else "gloo"
        text += f"; {run.strategy} over {world} ranks ({backend})"
    return text + f"; device {run.env.device.type}"


ASSUMED_VOCAB = 50_000  # orchestrate's --vocab-size default


def run(args: argparse.Namespace) -> int:
    config_path = Path(args.config).expanduser().absolute()
    if not config_path.is_file():
        raise ConfigError(
            f"--config: {config_path} not found; `lmstream orchestrate --experiment NAME ...` "
            "writes WORKSPACE/runs/NAME/training.yaml (see `lmstream orchestrate --help`)"
        )
    cfg = load_training_config(config_path)
    run_dir = config_path.parent
    if args.dry_run:
        # The data survey below may read a whole local corpus: the collector on first.
        collector.imports_done()
        collector.start_up_done()
        print(f"# resolved config: {args.config}")
        print(dump_training_config(cfg), end="")
        print(describe_plan(cfg))
        print("\n".join(describe_data_and_time(cfg, run_dir)))
        from lmstream.train.speed_plan import describe_speed

        vocab, _ = _vocab_size(cfg)
        if vocab is None:  # before orchestrate writes the tokenizer: plan for its default size
            vocab = ASSUMED_VOCAB
            print(f"speed plan assuming a vocabulary of {vocab:,} (orchestrate's default)")
        world = int(os.environ.get("WORLD_SIZE", "1"))
        print("\n".join(describe_speed(cfg, vocab, world)))
        return 0
    from lmstream.trackers import require_extras

    require_extras(cfg)  # a missing tracker package fails now, not after the data is ready
    if cfg.runtime.evaluation.tasks:
        from lmstream.harness import require_harness, resolve_tasks

        require_harness("runtime.evaluation.tasks")
        ev = cfg.runtime.evaluation  # a typo fails now, not at the first evaluation
        resolve_tasks(
            ev.tasks, ev.tasks_include_path, field="runtime.evaluation.tasks",
            include_field="runtime.evaluation.tasks_include_path",
        )  # fmt: skip
    if not cfg.tokenizer.tokenizer_json.is_file():
        raise LmstreamError(
            f"tokenizer.tokenizer_json: {cfg.tokenizer.tokenizer_json} not found; write it with "
            f"`lmstream orchestrate` (the experiment of {config_path}) or fix the path in "
            f"{config_path}"
        )
    if cfg.tokenizer.special_tokens is not None:  # a path that was given must exist and parse
        from lmstream.config import load_special_tokens

        load_special_tokens(cfg.tokenizer.special_tokens)
    if args.restart and args.resume is not None:
        raise LmstreamError("--restart starts at step 0: it cannot be combined with --resume")
    if args.rollback and args.resume is None:
        raise LmstreamError("--rollback goes with --resume PATH (the checkpoint to continue from)")
    return train(
        cfg, run_dir, args.resume, restart=args.restart, rollback=args.rollback,
        config_path=config_path,
    )  # fmt: skip
