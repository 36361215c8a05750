"""Sharded checkpoints for FSDP2: every rank writes its own part with torch.distributed.checkpoint.

Gathering a large model's full weights and optimizer moments onto rank 0 would need all of them
in one host's memory; instead each rank saves its shards (DCP writes one file per rank, rank 0
the ``.metadata``), as torchtitan does. The folder keeps the plain format's discipline: the same
``step-NNNNNNNN`` name, written into a temporary sibling, manifest (sizes + sha256 of every file,
shards included) written last by rank 0, then renamed into place::

    step-00001500/
      sharded/.metadata, sharded/__0_0.distcp, sharded/__1_0.distcp   model + optimizer (DCP)
      config.yaml  tokenizer.json  special_tokens.txt  trainer_state.pt  manifest.json

The checkpoint folder must be on a filesystem every rank sees (one machine, or a shared volume
across nodes). :func:`load_consolidated_model` turns the shards back into one plain state dict
without a process group (for generate, export and ``lmstream consolidate``).
"""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch import nn

from lmstream import distributed as dist
from lmstream.config import TrainingConfig
from lmstream.errors import CheckpointError
from lmstream.failures import first_line
from lmstream.train import checkpoint as ckpt

MODEL_PREFIX = "model."


def save_sharded_checkpoint(
    directory: str | os.PathLike,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    config: TrainingConfig,
    trainer_state: dict,
    *,
    world_size: int,
    extra_manifest: dict | None = None,
) -> Path:
    """Collective: every rank calls it. Returns the final folder (on every rank)."""
    is_main = _rank() == 0
    tag = dist.broadcast_object(os.getpid() if is_main else None)
    if is_main:
        final, tmp = ckpt.begin_checkpoint(directory, step, tag=str(tag))
    else:
        final = Path(directory) / ckpt.checkpoint_name(step)
        tmp = ckpt.temporary_path(directory, step, tag=str(tag))
    dist.barrier()  # the temporary folder exists before anyone writes into it
    dcp.save(dist.sharded_state_dicts(model, optimizer), checkpoint_id=tmp / ckpt.SHARDED_DIR)
    dist.barrier()  # every rank's shard is on disk
    if is_main:
        _check_shards_visible(tmp / ckpt.SHARDED_DIR)
        ckpt.write_metadata_files(tmp, config, trainer_state)
        extra = {"format": "sharded", "world_size": world_size, **(extra_manifest or {})}
        ckpt.finish_checkpoint(tmp, final, step, extra)
    dist.barrier()  # nobody reads or rotates before the rename
    return final


def _rank() -> int:
    import torch.distributed as tdist

    return tdist.get_rank() if tdist.is_available() and tdist.is_initialized() else 0


def _check_shards_visible(folder: Path) -> None:
    """Every file the metadata names must be here: a checkpoint directory that is local to each
    node would otherwise produce a manifest over a partial checkpoint."""
    metadata = dcp.FileSystemReader(str(folder)).read_metadata()
    names = {info.relative_path for info in (metadata.storage_data or {}).values()}
    missing = sorted(n for n in names if not (folder / n).is_file())
    if missing:
        raise CheckpointError(
            f"{folder}: shard files {', '.join(missing)} written by other ranks are not visible "
            "here; runtime.checkpoint.directory must be on a filesystem shared by all nodes"
        )


def load_sharded_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Collective: load model and optimizer shards into a (sharded) model, resharding as needed."""
    state = dist.sharded_state_dicts(model, optimizer)
    try:
        dcp.load(state, checkpoint_id=path / ckpt.SHARDED_DIR)
    except Exception as exc:  # DCP wraps per-rank failures in CheckpointException
        raise CheckpointError(
            f"{path}: cannot load the sharded checkpoint ({first_line(exc)})"
        ) from None
    dist.load_sharded_state_dicts(model, optimizer, state)


def load_consolidated_model(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The full model weights (plain names, fp32, CPU) of a sharded checkpoint, read in this one
    process (no process group; the optimizer shards are not read)."""
    folder = Path(path) / ckpt.SHARDED_DIR
    try:
        metadata = dcp.FileSystemReader(str(folder)).read_metadata()
    except Exception as exc:
        raise CheckpointError(f"{folder}: unreadable shard metadata ({exc})") from None
    model: dict[str, torch.Tensor] = {}
    for key, meta in metadata.state_dict_metadata.items():
        if key.startswith(MODEL_PREFIX) and hasattr(meta, "size"):
            model[key[len(MODEL_PREFIX) :]] = torch.empty(meta.size, dtype=meta.properties.dtype)
    if not model:
        raise CheckpointError(f"{folder}: the sharded checkpoint holds no model weights")
    import torch.distributed as tdist

    with warnings.catch_warnings():  # "assuming the intent is to load in a single process": yes
        warnings.simplefilter("ignore", UserWarning)
        dcp.load({"model": model}, checkpoint_id=folder, no_dist=not tdist.is_initialized())
    return {k: v.float() for k, v in model.items()}


def consolidate(path: str | os.PathLike, out_dir: str | os.PathLike, verify: bool = True) -> Path:
    """Write ``out_dir/step-NNNNNNNN``: a weights-only checkpoint in the plain format
    (model.safetensors plus the source's config.yaml, tokenizer.json, special_tokens.txt, and a
    manifest) for generate and export. The source's files are copied as they are, so the result
    does not depend on where the experiment's tokenizer lives now."""
    path = ckpt.resolve_checkpoint(path, check_hashes=verify)
    step = int(ckpt.read_manifest(path)["step"])
    state, _ = ckpt.load_model_state(path)
    final, tmp = ckpt.begin_checkpoint(out_dir, step)
    ckpt.write_model_file(tmp, state)
    for name in (ckpt.CONFIG_FILE, ckpt.TOKENIZER_FILE, ckpt.SPECIAL_TOKENS_FILE):
        if (path / name).is_file():
            shutil.copyfile(path / name, tmp / name)
    return ckpt.finish_checkpoint(tmp, final, step, {"consolidated_from": str(path)})
