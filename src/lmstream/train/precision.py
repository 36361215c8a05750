"""Compute precision: fp32, bf16 autocast, or fp16 autocast with loss scaling; and device peaks.

Master weights and optimizer state stay fp32 in every mode; autocast runs matmuls in the low
precision and the model computes its loss in fp32.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from lmstream.train.peaks import known_peak_tflops


@dataclass
class Precision:
    """How one micro-step runs: an autocast context and, for fp16, a GradScaler."""

    name: str
    device: torch.device
    scaler: torch.amp.GradScaler | None

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.name == "fp32":
            return contextlib.nullcontext()
        # fp8: the converted linears cast to float8 themselves; the rest runs in bf16.
        dtype = torch.float16 if self.name == "fp16" else torch.bfloat16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    @property
    def param_dtype(self) -> torch.dtype | None:
        """The compute dtype FSDP2 should gather parameters in (None = keep fp32)."""
        return {"bf16": torch.bfloat16, "fp8": torch.bfloat16, "fp16": torch.float16}.get(self.name)


def cpu_has_fast_bf16() -> bool:
    """True when the CPU has native bf16 matmul instructions (AVX512-BF16 or AMX)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def matmul_kind(precision: str, device_type: str, tf32: bool) -> str:
    """What the run's matmuls compute in: "bf16", "fp16", "tf32" (fp32 on CUDA with
    runtime.tf32) or "fp32"."""
    if precision == "fp32" and device_type == "cuda" and tf32:
        return "tf32"
    return precision


def build_precision(name: str, device: torch.device, tf32: bool = True) -> Precision:
    """The Precision for runtime.precision on ``device``, warning when it will be very slow.

    On CUDA, ``tf32`` (runtime.tf32) turns TF32 tensor-core matmuls and convolutions on or off
    for fp32 work (PyTorch's default leaves matmuls in full fp32, at a seventh of the peak on
    A100/H100); under bf16/fp16 autocast it only affects the few ops kept in fp32.
    """
    if name == "fp8":
        from lmstream.train.fp8 import check_fp8

        check_fp8(device)  # a one-line refusal on CPUs and GPUs older than compute 8.9
    if device.type == "cpu" and name in ("bf16", "fp16") and not cpu_has_fast_bf16():
        warnings.warn(
            f"runtime.precision: {name} on a CPU without native bf16/fp16 instructions runs "
            "50-300x slower than fp32 (correct, but slow); set `precision: fp32` for CPU runs",
            stacklevel=2,
        )
    if name == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        warnings.warn(
            "runtime.precision: this GPU has no native bf16; consider fp16 or fp32", stacklevel=2
        )
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
    scaler = torch.amp.GradScaler(device.type) if name == "fp16" else None
    return Precision(name=name, device=device, scaler=scaler)


def peak_flops(device: torch.device, configured_tflops: float | None, kind: str) -> float | None:
    """Peak FLOP/s of one device for MFU: runtime.peak_tflops (taken as the peak of the
    precision in use), else the known GPU's peak for ``kind``, else None (no MFU)."""
    if configured_tflops is not None:
        return configured_tflops * 1e12
    if device.type != "cuda":
        return None
    tflops = known_peak_tflops(torch.cuda.get_device_name(device), kind)
    return tflops * 1e12 if tflops is not None else None


def memory_gb(device: torch.device) -> float:
    """Peak memory: allocated CUDA memory on GPUs, the process's peak RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # KiB on Linux
