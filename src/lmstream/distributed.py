"""Multi-process training under torchrun: the process group, and parallelism applied outside the model.

The model file knows nothing about ranks. Here, in torchtitan's order (``parallelize.py``):
activation checkpointing, then torch.compile (per block), then DDP or FSDP2 (``fully_shard`` per
block, then the root). Parameter names never change (no wrapper modules around blocks), so
``model.state_dict()`` and checkpoints keep the plain names of the single-process model.

A single process without torchrun is the degenerate case: world size 1, no process group.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import logging
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.checkpoint import checkpoint

from lmstream.failures import register_peer

log = logging.getLogger(__name__)

# Models of at least this many parameters default to FSDP: their fp32 weights, gradients and
# AdamW moments (16 bytes/param) no longer fit comfortably beside activations when replicated.
FSDP_DEFAULT_MIN_PARAMS = 1_000_000_000
# A lost peer should end the job in minutes, not after NCCL's default of up to hours
# (docs/ARCHITECTURE.md, decision 8).
TIMEOUT_ENV = "LMSTREAM_DIST_TIMEOUT_S"
DEFAULT_TIMEOUT_S = int(os.environ.get(TIMEOUT_ENV, "600"))


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    notes: tuple[str, ...] = ()  # decisions taken while joining, for the run's log

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def pick_device(
    preference: str = "auto", local_rank: int | None = None, *, field: str = "--device"
) -> torch.device:
    """'auto' -> this rank's GPU when CUDA is available, else the CPU; 'cuda:N' names a GPU.
    A bad name, or cuda without a CUDA device, is a ConfigError naming ``field`` (the flag or
    config key the preference came from)."""
    from lmstream.errors import ConfigError

    kind, _, index = preference.partition(":")
    if kind not in ("auto", "cpu", "cuda") or (index and (kind != "cuda" or not index.isdigit())):
        raise ConfigError(f"{field}: expected auto, cpu, cuda or cuda:N (given: {preference!r})")
    if kind == "cpu" or (kind == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError(
            f"{field}: {preference!r} was asked for but no CUDA device is available; "
            "use 'auto' or 'cpu'"
        )
    if index:
        return torch.device("cuda", int(index))
    return torch.device("cuda", local_rank) if local_rank is not None else torch.device("cuda")


def collective_timeout_s(requested: float, source_budget_s: float) -> tuple[int, str | None]:
    """The collective timeout to use, and a note when it had to be raised.

    A rank whose data source is failing keeps retrying (``source_budget_s`` at worst) before it
    joins the per-step agreement that tells every rank to checkpoint; its peers wait for it
    there. A timeout shorter than that budget lost the run: the peers timed out and no rank
    saved (issue #19). So the timeout is at least the budget plus a margin for the step and the
    checkpoint write around it.
    """
    needed = math.ceil(source_budget_s * 1.25 + 30)
    if requested >= needed:
        return int(requested), None
    return needed, (
        f"collective timeout raised from {requested:g} s ({TIMEOUT_ENV}) to {needed} s, so that "
        f"ranks wait out a peer's data-source retries (up to {source_budget_s:.0f} s: "
        "LMSTREAM_SOURCE_MAX_RETRIES reads of LMSTREAM_SOURCE_READ_TIMEOUT plus backoff) and "
        "all checkpoint together"
    )


def _source_budget_s() -> float:
    from lmstream.data.sources import RetryPolicy, SourceSpec

    return RetryPolicy().budget_s(SourceSpec(path="").read_timeout)  # both from the environment


def init_distributed(device_preference: str = "auto", timeout_s: int | None = None) -> DistEnv:
    """Read torchrun's environment and join the process group (NCCL on GPUs, gloo on CPU),
    with a collective timeout of ``timeout_s`` (LMSTREAM_DIST_TIMEOUT_S, default 600) raised
    above the data source's retry budget (:func:`collective_timeout_s`)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_preference, local_rank, field="runtime.device")
    notes: tuple[str, ...] = ()
    if world_size > 1 and not dist.is_initialized():
        requested = DEFAULT_TIMEOUT_S if timeout_s is None else timeout_s
        timeout, note = collective_timeout_s(requested, _source_budget_s())
        notes = (note,) if note else ()
        if device.type == "cuda":
            torch.cuda.set_device(device)
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout))
        register_peer(rank)
    return DistEnv(rank, world_size, local_rank, device, notes)


def teardown(clean: bool = True) -> None:
    """Leave the process group (safe to call when there is none).

    After a failure (``clean=False``) the group is left to the process exit instead: destroying
    it can block on a peer that is gone (NCCL), and torchrun is tearing the job down anyway.
    """
    if clean and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def choose_parallelism(requested: str, num_parameters: int) -> Literal["ddp", "fsdp"]:
    if requested in ("ddp", "fsdp"):
        return requested  # type: ignore[return-value]
    return "fsdp" if num_parameters >= FSDP_DEFAULT_MIN_PARAMS else "ddp"


def _checkpointed_forward(original, *args, **kwargs):
    # use_reentrant=False: works with kwargs, torch.compile and FSDP2 (PyTorch's recommendation).
    return checkpoint(original, *args, use_reentrant=False, **kwargs)


def apply_activation_checkpointing(blocks: nn.ModuleList) -> None:
    """Recompute each block's activations in backward. Replaces ``forward`` on the instance so
    parameter names stay those of the plain model."""
    for block in blocks:
        block.forward = functools.partial(_checkpointed_forward, block.forward)


def apply_compile(blocks: nn.ModuleList) -> None:
    """torch.compile each block in place (``Module.compile`` keeps parameter names). All blocks
    share one graph, so compile time does not grow with depth."""
    for block in blocks:
        block.compile()


def _fsdp_api():
    try:  # torch >= 2.6
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    except ImportError:  # torch 2.5
        from torch.distributed._composable.fsdp import MixedPrecisionPolicy, fully_shard
    return fully_shard, MixedPrecisionPolicy


def apply_fsdp(
    model: nn.Module, blocks: nn.ModuleList, param_dtype: torch.dtype | None
) -> nn.Module:
    """FSDP2: shard each block, then the root (embeddings, final norm, head)."""
    fully_shard, MixedPrecisionPolicy = _fsdp_api()
    # Gradients are reduced in fp32 even when compute runs in bf16, for stable updates.
    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    for i, block in enumerate(blocks):
        # The last block's parameters are needed again at once by backward: don't reshard them.
        fully_shard(block, mp_policy=mp, reshard_after_forward=i < len(blocks) - 1)
    fully_shard(model, mp_policy=mp)
    return model


def parallelize(
    model: nn.Module,
    env: DistEnv,
    *,
    strategy: Literal["ddp", "fsdp"],
    compile: bool = False,
    activation_checkpointing: bool = False,
    param_dtype: torch.dtype | None = None,
) -> nn.Module:
    """Apply AC, compile, then DDP/FSDP to a model already on ``env.device``; returns the module
    to call (the same object for FSDP2, a DDP wrapper for DDP)."""
    blocks = model.blocks
    if activation_checkpointing:
        apply_activation_checkpointing(blocks)
    if compile:
        apply_compile(blocks)
    if not env.is_distributed:
        return model
    if strategy == "fsdp":
        return apply_fsdp(model, blocks, param_dtype)
    device_ids = [env.device.index] if env.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model under a DDP wrapper (FSDP2 shards in place, so it is the model itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


@contextlib.contextmanager
def gradient_sync(model: nn.Module, enabled: bool) -> Iterator[None]:
    """Skip the gradient all-reduce on non-final micro-steps of an accumulation (nanoGPT's
    ``require_backward_grad_sync``): DDP via ``no_sync``, FSDP2 via ``set_requires_gradient_sync``."""
    if enabled:
        yield
        return
    if isinstance(model, nn.parallel.DistributedDataParallel):
        with model.no_sync():
            yield
        return
    setter = getattr(model, "set_requires_gradient_sync", None)
    if setter is None:  # single process: nothing to sync
        yield
        return
    setter(False)
    try:
        yield
    finally:
        setter(True)


def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    """Mean of a tensor over ranks (identity in a single process)."""
    if dist.is_available() and dist.is_initialized():
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        value /= dist.get_world_size()
    return value


def all_reduce_sum(value: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value


def all_reduce_max(value: torch.Tensor) -> torch.Tensor:
    """Elementwise maximum over ranks (e.g. the slowest rank's data wait, the peak memory)."""
    if dist.is_available() and dist.is_initialized():
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return value


def agree_max(values: list[float], device: torch.device) -> list[float]:
    """Each value's maximum over ranks (the values themselves in a single process): one small
    collective that lets ranks agree on flags and counters before choosing a branch."""
    if not (dist.is_available() and dist.is_initialized()):
        return list(values)
    return all_reduce_max(torch.tensor(values, dtype=torch.float64, device=device)).tolist()


def local_tensor(value: torch.Tensor) -> torch.Tensor:
    """A plain tensor: the full value of a DTensor (e.g. FSDP2's gradient norm), else itself."""
    full = getattr(value, "full_tensor", None)
    return full() if full is not None else value


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def broadcast_object(obj, src: int = 0):
    """Rank ``src``'s Python object on every rank (identity in a single process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


_T = TypeVar("_T")


def on_main(is_main: bool, work: Callable[[], _T], errors: tuple[type[Exception], ...]) -> _T:
    """``work()`` on rank 0 only; its result on every rank. An error of ``errors`` that it
    raises is raised on every rank (same type, same message), so no rank is left waiting in a
    collective for one that failed. The error types take their message as their one argument."""
    outcome = None
    if is_main:
        try:
            outcome = (True, work())
        except errors as err:
            outcome = (False, (type(err), str(err)))
    ok, value = broadcast_object(outcome)
    if not ok:
        kind, text = value
        raise kind(text)
    return value


def gather_objects(obj) -> list:
    """Every rank's object, in rank order, on every rank (e.g. each rank's data-loader state)."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def _sd_options(**kwargs):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(**kwargs)


def full_model_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Plain-named, full (unsharded) CPU state dict of the model, on every rank. Under FSDP2 this
    gathers the shards; under DDP it strips the ``module.`` prefix."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    model = unwrap(model)
    if not _is_sharded(model):
        return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    return get_model_state_dict(model, options=_sd_options(full_state_dict=True, cpu_offload=True))


def load_full_model_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a full state dict into a plain, DDP or FSDP2 model (every rank passes the full dict)."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    model = unwrap(model)
    if not _is_sharded(model):
        model.load_state_dict(state, strict=True)
        return
    set_model_state_dict(model, state, options=_sd_options(full_state_dict=True, strict=True))


def full_optimizer_state_dict(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The optimizer's state keyed by parameter *names* and unsharded, so a checkpoint does not
    depend on the parallelism it was written under."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(
        unwrap(model), optimizer, options=_sd_options(full_state_dict=True, cpu_offload=True)
    )


def load_full_optimizer_state_dict(
    model: nn.Module, optimizer: torch.optim.Optimizer, state: dict
) -> None:
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    set_optimizer_state_dict(
        unwrap(model), optimizer, state, options=_sd_options(full_state_dict=True)
    )


def sharded_state_dicts(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """``{"model": ..., "optimizer": ...}`` as this rank's shards (DTensors under FSDP2), keyed by
    parameter names: what torch.distributed.checkpoint saves and loads in place."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optim_state = get_state_dict(unwrap(model), optimizer)
    return {"model": model_state, "optimizer": optim_state}


def load_sharded_state_dicts(
    model: nn.Module, optimizer: torch.optim.Optimizer, state: dict
) -> None:
    """Load what :func:`sharded_state_dicts` returned (after DCP filled it) into the model."""
    from torch.distributed.checkpoint.state_dict import set_state_dict

    set_state_dict(
        unwrap(model),
        optimizer,
        model_state_dict=state["model"],
        optim_state_dict=state["optimizer"],
        options=_sd_options(strict=True),
    )


def is_dtensor(value: object) -> bool:
    """Whether ``value`` is a DTensor (FSDP2's sharded parameters and their state)."""
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # torch 2.5
        from torch.distributed._tensor import DTensor
    return isinstance(value, DTensor)


def _is_sharded(model: nn.Module) -> bool:
    return any(is_dtensor(p) for p in model.parameters())
