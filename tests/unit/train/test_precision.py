"""MFU's peak is the peak of the precision in use; fp32 on CUDA runs TF32 matmuls unless
runtime.tf32 is off. The GPU paths are pure functions (and torch flags), tested here on a CPU."""

from __future__ import annotations

import pytest
import torch

from lmstream.train.precision import build_precision, known_peak_tflops, matmul_kind, peak_flops


@pytest.mark.parametrize(
    ("precision", "device", "tf32", "kind"),
    [
        ("fp32", "cuda", True, "tf32"),
        ("fp32", "cuda", False, "fp32"),
        ("fp32", "cpu", True, "fp32"),
        ("bf16", "cuda", True, "bf16"),
        ("bf16", "cuda", False, "bf16"),
        ("fp16", "cuda", True, "fp16"),
        ("fp8", "cuda", True, "fp8"),
    ],
)
def test_matmul_kind_follows_precision_and_tf32(precision, device, tf32, kind) -> None:
    assert matmul_kind(precision, device, tf32) == kind


@pytest.mark.parametrize(
    ("name", "kind", "tflops"),
    [
        ("NVIDIA H100 80GB HBM3", "bf16", 989.0),
        ("NVIDIA H200", "tf32", 494.5),
        ("NVIDIA H100 80GB HBM3", "fp32", 67.0),
        ("NVIDIA A100-SXM4-80GB", "fp16", 312.0),
        ("NVIDIA A100-SXM4-80GB", "tf32", 156.0),
        ("NVIDIA A100-SXM4-80GB", "fp32", 19.5),
        ("Tesla T4", "bf16", None),
        ("NVIDIA H100 80GB HBM3", "fp8", 1979.0),
        ("NVIDIA H100 PCIe", "bf16", 756.0),
        ("NVIDIA H100 PCIe", "fp8", 1513.0),
        ("NVIDIA H100 NVL", "bf16", 835.0),
        ("NVIDIA H200", "fp8", 1979.0),
        ("NVIDIA H200 NVL", "fp8", 1670.0),
        ("NVIDIA B200", "bf16", 2250.0),
        ("NVIDIA B200", "fp8", 4500.0),
        ("NVIDIA A100 80GB PCIe", "fp8", None),  # no FP8 units
        ("NVIDIA L40S", "bf16", 362.0),
        ("NVIDIA L40S", "fp8", 733.0),
        ("NVIDIA L40", "bf16", 181.0),
        ("NVIDIA L4", "fp8", 242.5),
        ("NVIDIA GeForce RTX 4090", "bf16", 165.2),
        ("NVIDIA GeForce RTX 4090", "fp8", 330.3),
        ("NVIDIA GeForce RTX 5090", "bf16", 209.5),
        ("NVIDIA GeForce RTX 5090", "fp8", 419.0),
    ],
)
def test_known_peaks_are_per_precision(name, kind, tflops) -> None:
    assert known_peak_tflops(name, kind) == tflops


def test_a_configured_peak_wins_and_a_cpu_has_none() -> None:
    cpu = torch.device("cpu")
    assert peak_flops(cpu, 100.0, "fp32") == 100e12
    assert peak_flops(cpu, None, "fp32") is None


@pytest.fixture
def restore_tf32_flags():
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.mark.parametrize("tf32", [True, False])
def test_fp32_on_cuda_sets_tf32_matmuls_as_configured(tf32, restore_tf32_flags) -> None:
    torch.backends.cuda.matmul.allow_tf32 = not tf32
    build_precision("fp32", torch.device("cuda"), tf32=tf32)  # no GPU needed to set the flags
    assert torch.backends.cuda.matmul.allow_tf32 is tf32
    assert torch.backends.cudnn.allow_tf32 is tf32


def test_tf32_is_a_documented_switch_on_by_default(small_config) -> None:
    assert small_config.runtime.tf32 is True
    assert "TF32" in type(small_config.runtime).model_fields["tf32"].description
