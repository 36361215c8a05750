"""Build everything a run needs from training.yaml, and restore it from a checkpoint on resume.

:func:`build_run` computes each part once, in the order exact resume needs, then constructs the
finished :class:`Run`: seed, build the model (init draws from the RNG), the optimizer, the data
loader and the fixed validation batches; then :func:`_start` (fresh) or :func:`_resume`, which
loads weights, optimizer, counters and the data position and restores the RNG states last, so
the generators continue exactly where the interrupted run left them.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from pydantic import ValidationError
from torch import nn

from lmstream import collector
from lmstream import distributed as dist
from lmstream.config import ModelConfig, TrainingConfig, format_validation_error
from lmstream.errors import CheckpointError, ConfigError
from lmstream.train import checkpoint as ckpt
from lmstream.train import run_folder
from lmstream.train.checkpointer import restore_weights
from lmstream.train.device_defaults import loss_chunk_tokens, resolve_compile
from lmstream.train.optim import build_optimizer, make_schedule
from lmstream.train.precision import Precision, build_precision
from lmstream.train.state import (
    TrainState,
    check_resume_config,
    check_resume_data_source,
    restore_rng,
    seed_everything,
)

if TYPE_CHECKING:
    from lmstream.data.pinning import Pin

log = logging.getLogger(__name__)


@dataclass
class Run:
    """The components of one training run (what the loop works on)."""

    cfg: TrainingConfig  # resolved, with model.vocab_size = the real vocabulary (saved as is)
    env: dist.DistEnv
    model: nn.Module  # possibly wrapped (DDP) or sharded (FSDP2)
    optimizer: torch.optim.Optimizer
    precision: Precision
    loader: object
    val_batches: list
    schedule: Callable[[int], float]
    total_steps: int
    flops_per_token: float
    strategy: str  # "ddp" (plain checkpoints) or "fsdp" (sharded checkpoints)
    data_source: dict | None  # streaming_config.json as trained on (saved, compared)
    data_commits: tuple[Pin, ...]  # the commit each Hub source is read at (saved, reused)
    data_contents: list[dict]  # what each source holds at start-up (saved; data.content_record)
    # Where training starts (the fields of :class:`Start`): step 0, or a restored checkpoint.
    state: TrainState
    batches: Iterator | None
    prefetched: int
    resumed_from: Path | None
    notes: list[str]
    tracker_state: dict
    history: list[str]
    lineage_parent: str | None
    micro_batch: int | None
    data_changes: list[str]


@dataclass
class Start:
    """Where training starts: step 0, or the state a checkpoint restored."""

    state: TrainState
    batches: Iterator | None  # iter(loader), made before the RNG is restored; None: finished
    prefetched: int  # micro-batches at the head of ``batches`` already past the loader
    resumed_from: Path | None = None
    notes: list[str] = field(default_factory=list)  # resume compatibility notes, to report
    tracker_state: dict = field(default_factory=dict)  # the checkpoint's tracker run ids
    history: list[str] = field(default_factory=list)  # run-folder changes (rollback), to report
    lineage_parent: str | None = None  # what the next checkpoint continues from (its manifest)
    micro_batch: int | None = None  # the checkpoint's runtime.micro_batch choice (resume)
    data_changes: list[str] = field(default_factory=list)  # sources changed since, to report


def resolve_vocab_size(cfg: TrainingConfig, tokenizer) -> int:
    """model.vocab_size when set (at least the tokenizer's), else the tokenizer's vocabulary."""
    from lmstream.data.packing import check_vocab  # the one rule, shared with the data loader

    return check_vocab(tokenizer, cfg.model.vocab_size)


def build_model(cfg: TrainingConfig, vocab_size: int, device: torch.device) -> nn.Module:
    """The Transformer built and initialised directly on ``device`` (no fp32 copy on the host)."""
    from lmstream.model.transformer import Transformer

    with torch.device(device):
        model = Transformer(cfg.model, vocab_size)
    model.loss_chunk_tokens = loss_chunk_tokens(cfg.runtime.chunked_loss, device)
    return model


def _measure_steps_per_epoch(cfg: TrainingConfig, tokenizer, run_dir: Path, env) -> int:
    """Optimizer steps in one epoch of a finite stream, counted by one pass of a fresh loader
    (needed to shape the schedule when only scheduler.total_epochs is given)."""
    from lmstream.data.loader import build_train_loader

    loader = build_train_loader(cfg, tokenizer, run_dir, rank=env.rank, world_size=env.world_size)
    micro = 0
    for batch in loader:
        if batch.epoch > 0:
            break
        micro += 1
    # Ranks' parts of the stream differ in length: an epoch lasts as long as the longest (the
    # others step on idle batches meanwhile, see lmstream.data.loader), its last step maybe
    # partly idle, so a pass shorter than one step is one step.
    micro = int(dist.agree_max([micro], env.device)[0])
    if micro == 0:
        raise ConfigError(
            "scheduler.total_epochs: one epoch holds no batches; add data or lower "
            "data.validation_documents"
        )
    return -(-micro // cfg.data.gradient_accumulation_steps)


def build_run(
    cfg: TrainingConfig,
    run_dir: Path,
    env: dist.DistEnv,
    resume: str | os.PathLike | None = None,
    *,
    rollback: bool = False,
) -> Run:
    """Everything for the loop; with ``resume`` (a checkpoint, checkpoints or run folder) the
    state of the newest complete checkpoint is restored after a compatibility check. Resuming
    an older checkpoint while newer ones exist needs ``rollback``; they are then moved into
    RUN/abandoned/ (once every check has passed)."""
    from lmstream.data.content_record import content_changes, source_contents
    from lmstream.data.loader import build_train_loader, build_validation_batches
    from lmstream.data.pinning import reading_at
    from lmstream.tokenizer import load_tokenizer

    collector.imports_done()  # what is built from here is searched for garbage once built
    tokenizer = load_tokenizer(cfg.tokenizer.tokenizer_json)
    cfg = cfg.model_copy(deep=True)
    try:
        cfg.model.vocab_size = resolve_vocab_size(cfg, tokenizer)
    except ValidationError as err:  # a model check that needs the vocabulary (the separator id)
        lines = format_validation_error(err, "model", ModelConfig)
        raise ConfigError([line.replace("model: ", "model.", 1) for line in lines]) from None
    if cfg.model.document_masking and cfg.model.document_separator_id is None:
        from lmstream.data.packing import eot_id  # the separator the packer writes

        cfg.model.document_separator_id = eot_id(tokenizer)  # saved, like vocab_size
    # Refuse an incompatible checkpoint before spending minutes building a large model.
    opened = _open_resume(resume, env, cfg, rollback) if resume is not None else None
    source = data_source(run_dir)
    source_notes: list[str] = []
    if opened is not None:  # before the loader writes its validation cache
        _check_tokenizer(opened[0], cfg.tokenizer.tokenizer_json)
        source_notes = check_resume_data_source(opened[1].get("data_source"), source)
    # Once, before anything reads the data: every read of this run uses these commits.
    pins = _pin_hub_sources(cfg, run_dir, env, opened[1] if opened is not None else None)
    contents = dist.on_main(env.is_main, lambda: source_contents(cfg, Path(run_dir)), (OSError,))
    seed_everything(cfg.runtime.seed)

    model = build_model(cfg, cfg.model.vocab_size, env.device)
    flops = model.flops_per_token(cfg.data.sequence_length)
    precision = build_precision(cfg.runtime.precision, env.device, cfg.runtime.tf32)
    if cfg.runtime.precision == "fp8":  # before AC, compile and FSDP wrap the blocks
        from lmstream.train.fp8 import convert_to_fp8

        model = convert_to_fp8(model)
    strategy = dist.choose_parallelism(cfg.runtime.parallelism, model.num_parameters())
    if not env.is_distributed:
        strategy = "ddp"  # one process: nothing to shard, plain checkpoints
    model = dist.parallelize(
        model,
        env,
        strategy=strategy,
        compile=resolve_compile(cfg.runtime.compile, env.device),
        activation_checkpointing=cfg.runtime.activation_checkpointing,
        param_dtype=precision.param_dtype,
    )
    optimizer = build_optimizer(model, cfg.optimizer, cfg.peak_lr, env.device)
    with reading_at(pins):
        loader = build_train_loader(
            cfg, tokenizer, run_dir, rank=env.rank, world_size=env.world_size, sync_passes=True
        )
        val_batches = build_validation_batches(
            cfg, tokenizer, run_dir, rank=env.rank, world_size=env.world_size
        )
    if opened is None:
        start = Start(TrainState(), _primed(loader), 1)
    else:
        path, trainer = opened
        start = _resume(cfg, env, model, optimizer, precision, loader, path, trainer)
        start.notes += source_notes
        start.data_changes = content_changes(trainer.get("data_contents"), contents)
        start.lineage_parent = _parent_ref(path, cfg)
        if env.is_main:  # every check passed: now the newer branch may move aside
            moved = run_folder.roll_back(cfg, run_dir, start.state.step)
            start.history = [moved] if moved else []
        dist.barrier()
    total = cfg.scheduler.total_steps
    if total is None:
        if start.state.steps_per_epoch is None:
            collector.start_up_done()  # a whole pass over the data follows
            with reading_at(pins):
                steps = _measure_steps_per_epoch(cfg, tokenizer, run_dir, env)
            start.state.steps_per_epoch = steps
        total = start.state.steps_per_epoch * cfg.scheduler.total_epochs
    schedule = make_schedule(cfg.scheduler, cfg.peak_lr, cfg.min_lr, total)
    return Run(
        cfg, env, model, optimizer, precision, loader, val_batches, schedule, total, flops,
        strategy, source, pins, contents,
        **{f.name: getattr(start, f.name) for f in fields(Start)},
    )  # fmt: skip


def _pin_hub_sources(
    cfg: TrainingConfig, run_dir: Path, env: dist.DistEnv, trainer: dict | None
) -> tuple[Pin, ...]:
    """The commit each Hub source of the run is read at: the resumed checkpoint's record, else
    resolved now. Rank 0 asks the Hub and every rank uses its answer (or raises its error), so
    ranks cannot read different commits when the branch moves during start-up."""
    from lmstream.data.mixture_plan import resolve_sources
    from lmstream.data.pinning import PinnedCommitGone, hub_sources, pin_sources

    plans = [source.plan for source in resolve_sources(cfg, Path(run_dir))]
    specs = [s for plan in plans for s in (plan.spec, plan.validation_spec) if s is not None]
    if not hub_sources(specs):  # the same on every rank: none skips the collective together
        return ()
    # [] for a checkpoint of an lmstream that recorded no commits: a resume, unlike a fresh start
    recorded = trainer.get("data_commits", []) if trainer is not None else None
    return dist.on_main(env.is_main, lambda: pin_sources(specs, recorded), (PinnedCommitGone,))


def _primed(loader) -> Iterator:
    """``iter(loader)`` with its first batch already fetched. A (Stateful)DataLoader draws its
    base seed from the global torch RNG on the first ``next()``; doing that before the RNG
    states are restored keeps dropout's stream identical to the uninterrupted run's."""
    batches = iter(loader)
    try:
        first = next(batches)
    except StopIteration:
        return iter(())
    return itertools.chain([first], batches)


def data_source(run_dir: Path) -> dict:
    """What the run reads, as recorded in each checkpoint: streaming_config.json's fields
    (streaming mode) or just the mode (files mode: training.yaml's data.* fields say the rest)."""
    from lmstream.config import load_streaming_config
    from lmstream.data.documents import STREAMING_CONFIG

    path = Path(run_dir) / STREAMING_CONFIG
    if not path.is_file():
        return {"mode": "files"}
    sc = load_streaming_config(path)
    return {"mode": "streaming", **sc.model_dump(mode="json", exclude={"experiment"})}


def _parent_ref(path: Path, cfg: TrainingConfig) -> str:
    """How a checkpoint names the one it continued from: the folder name within the same
    checkpoints folder (so a copied run folder keeps its lineage), else the full path."""
    same = Path(path).parent.resolve() == Path(cfg.runtime.checkpoint.directory).resolve()
    return Path(path).name if same else str(path)


def _open_resume(
    resume: str | os.PathLike, env: dist.DistEnv, cfg: TrainingConfig, rollback: bool
) -> tuple[Path, dict]:
    """(checkpoint folder, trainer state), refusing a checkpoint written by another number of
    ranks (each rank's data position belongs to its rank of that world size) and an older
    checkpoint while newer ones exist without ``rollback``."""

    # Rank 0 picks (and hash-checks) the checkpoint; every rank then loads that same one, or
    # raises the same error (none is left waiting in a collective).
    def pick() -> Path:
        path = ckpt.resolve_checkpoint(resume, check_hashes=True)
        # Only a checkpoint named explicitly can be older than an intact one: the newest that
        # verifies is what a folder resolves to (newer ones are damaged: moved aside).
        if Path(resume).expanduser().resolve() == path.resolve():
            run_folder.check_rollback(cfg, path, rollback)
        return path

    path = dist.on_main(env.is_main, pick, (CheckpointError, run_folder.RunFolderError))
    trainer = ckpt.load_trainer_state(path)
    world = trainer.get("world_size", 1)
    if world != env.world_size:
        raise CheckpointError(
            f"cannot resume: {path} was written by {world} ranks (world size {world}) and this "
            f"run has world size {env.world_size}; each rank's data position would no longer "
            f"match. Resume with {world} ranks (torchrun --nproc_per_node x --nnodes = {world})"
        )
    return path, trainer


# Every part of tokenizer.json that changes the ids of a text (or the text of ids); a change
# in any of them (a Lowercase normalizer, say) changes what the model was trained on.
TOKENIZER_PARTS = (
    "normalizer",
    "pre_tokenizer",
    "model",
    "added_tokens",
    "post_processor",
    "decoder",
)


def _check_tokenizer(path: Path, tokenizer_json: Path) -> None:
    """The checkpoint's own tokenizer.json must be the one this run tokenizes with: a file
    replaced in place (same path, same vocabulary size) would silently change every token id."""
    import json

    saved = path / ckpt.TOKENIZER_FILE
    if not saved.is_file():
        return
    try:
        old, new = (
            json.loads(Path(p).read_text(encoding="utf-8")) for p in (saved, tokenizer_json)
        )
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot compare tokenizers ({exc})") from None
    differ = [k for k in TOKENIZER_PARTS if old.get(k) != new.get(k)]
    if differ:
        raise CheckpointError(
            f"cannot resume: {tokenizer_json} is not the tokenizer {path} was trained with "
            f"({', '.join(differ)} differ); point tokenizer.tokenizer_json at {saved}"
        )


def _resume(cfg, env, model, optimizer, precision, loader, path: Path, trainer: dict) -> Start:
    """Restore a checkpoint in the order exact resume needs (each step below may draw from the
    RNG or depend on the one before): weights and optimizer, loss scaler, counters, the data
    position, the batches the loader hands out first, and the RNG states last."""
    notes = check_resume_config(ckpt.load_config(path), cfg)
    restore_weights(path, model, optimizer, trainer)
    if precision.scaler is not None and trainer.get("scaler"):
        precision.scaler.load_state_dict(trainer["scaler"])
    state = TrainState.from_dict(trainer["state"])
    loader.load_state_dict(trainer["data"][env.rank])
    start = Start(state, None, 0, path, notes, trainer.get("trackers") or {},
                  micro_batch=trainer.get("micro_batch"))  # fmt: skip
    if not _finished(
        cfg, state, ends_by_epochs(cfg, loader)
    ):  # else nothing to train: no batch taken (the loader stays)
        # iter(loader) draws the DataLoader's base seed from the RNG: before the restore below.
        start.batches, start.prefetched = _primed(loader), 1
        pending = trainer.get("pending")  # micro-batches taken before a source failed: first
        if pending and pending[env.rank]:
            from lmstream.data.mixture import MixBatch
            from lmstream.data.packing import Batch

            # (inputs, targets, epoch[, a mixture's tokens per source]); the 4th is newer.
            first = [
                MixBatch(x, y, int(epoch), 1.0, tuple(src[0])) if src else Batch(x, y, int(epoch))
                for x, y, epoch, *src in pending[env.rank]
            ]
            start.batches = itertools.chain(first, start.batches)
            start.prefetched += len(first)
    restore_rng(trainer["rng"][env.rank])  # last: nothing may draw from the RNG after this
    return start


def ends_by_epochs(cfg: TrainingConfig, loader) -> bool:
    """Whether the run ends when its last epoch ends rather than at a step count: a mixture
    given only total_epochs. Its passes differ in length by a few steps (each pass holds other
    documents of the secondary sources), so the first pass's steps x total_epochs, which shapes
    the schedule, only estimates the run's length (past it, the schedule stays at its end)."""
    return cfg.scheduler.total_steps is None and getattr(loader, "mix", None) is not None


def _finished(cfg: TrainingConfig, state: TrainState, by_epochs: bool) -> bool:
    """Whether the restored run is already at its last step (total_steps, or total_epochs
    times the steps per epoch it measured), or past its last epoch (``by_epochs``)."""
    s = cfg.scheduler
    if by_epochs:
        return state.epoch >= s.total_epochs
    total = s.total_steps
    if total is None and state.steps_per_epoch is not None:
        total = state.steps_per_epoch * s.total_epochs
    return total is not None and state.step >= total
