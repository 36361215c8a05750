"""`lmstream train --dry-run`'s speed lines: the MFU formula and the peak it divides by, and the
memory plan per GPU with what to change when it will not fit (train/memory_plan.py)."""

from __future__ import annotations

import torch

from lmstream.config import TrainingConfig
from lmstream.train import micro_batch
from lmstream.train.device_defaults import loss_chunk_tokens
from lmstream.train.memory_plan import GB, advice, plan_memory
from lmstream.train.peaks import MFU_FORMULA, known_peak_tflops
from lmstream.train.precision import matmul_kind


def _device(cfg: TrainingConfig) -> torch.device:
    wanted = cfg.runtime.device
    if wanted == "auto":
        wanted = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(wanted)


def describe_speed(cfg: TrainingConfig, vocab: int, world_size: int = 1) -> list[str]:
    """The dry-run's MFU and memory lines for ``cfg`` with a vocabulary of ``vocab``."""
    from lmstream.model.transformer import Transformer

    rt = cfg.runtime
    device = _device(cfg)
    here = device.type == "cuda" and torch.cuda.is_available()
    name = torch.cuda.get_device_name(0) if here else None
    kind = matmul_kind(rt.precision, device.type, rt.tf32)
    if rt.peak_tflops is not None:
        peak = f"runtime.peak_tflops {rt.peak_tflops:g} TFLOPS"
    elif name is not None:
        tflops = known_peak_tflops(name, kind)
        peak = f"{name} {kind} {tflops:g} TFLOPS" if tflops else f"{name}: not in the table"
    else:
        peak = "no GPU here (set runtime.peak_tflops for an MFU on other devices)"
    lines = [MFU_FORMULA, f"MFU peak: {peak}"]

    with torch.device("meta"):
        n = Transformer(cfg.model, vocab).num_parameters()
    sized = cfg.model_copy(deep=True)
    sized.model.vocab_size = vocab
    chunk = loss_chunk_tokens(rt.chunked_loss, device)
    fsdp = world_size > 1 and (
        rt.parallelism == "fsdp" or (rt.parallelism == "auto" and n >= 1_000_000_000)
    )
    batch = cfg.data.batch_size

    def plan(config: TrainingConfig, shard: bool):
        return plan_memory(config, n, batch, world_size, shard, chunk > 0, chunk or 4096)

    now = plan(sized, fsdp)
    card = torch.cuda.get_device_properties(0).total_memory if here else None
    lines.extend(now.lines(card))
    with_ac = sized.model_copy(deep=True)
    with_ac.runtime.activation_checkpointing = not rt.activation_checkpointing
    label = "with" if with_ac.runtime.activation_checkpointing else "without"
    lines.append(
        f"  {label} activation checkpointing: {plan(with_ac, fsdp).total / GB:.2f} GB; "
        f"with FSDP over 8 GPUs: {plan_memory(sized, n, batch, 8, True, chunk > 0).total / GB:.2f} GB"
    )
    if micro_batch.wanted(rt.micro_batch, device):
        lines.append(
            "  micro-batch: measured at start-up (runtime.micro_batch: auto); planned here at "
            f"data.batch_size {batch}"
        )
    limit = rt.memory_limit_gb * GB if rt.memory_limit_gb else (0.9 * card if card else None)
    if limit:
        hint = advice(sized, now, limit, world_size)
        if hint:
            lines.append(f"  {hint}")
    return lines
