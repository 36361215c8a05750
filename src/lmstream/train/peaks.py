"""Dense peak TFLOPS of known GPUs by the kind of matmul, for MFU.

Vendor data sheets, dense (the sparsity figures are twice these), with FP32 accumulation
where the card offers two rates (GeForce cards run fp16/bf16 with fp32 accumulation at half
their headline rate, and PyTorch accumulates in fp32). "fp32" is the CUDA-core rate. MFU is
measured against the peak of the kind the run computes in: an fp8 run against the fp8 peak,
fp32 with TF32 against the TF32 peak, so a run is never flattered by a slower kind's peak.
Patterns are tried in order (the more specific names first: "H100 PCIe" before "H100").
"""

from __future__ import annotations

import re

_TABLE: list[tuple[str, dict[str, float]]] = [
    (r"H100.*PCIe", {"bf16": 756.0, "fp8": 1513.0, "tf32": 378.0, "fp32": 51.0}),
    (r"H100.*NVL", {"bf16": 835.0, "fp8": 1670.0, "tf32": 417.5, "fp32": 60.0}),
    (r"H200.*NVL", {"bf16": 835.0, "fp8": 1670.0, "tf32": 417.5, "fp32": 60.0}),
    (r"H100|H200|GH200", {"bf16": 989.0, "fp8": 1979.0, "tf32": 494.5, "fp32": 67.0}),  # SXM
    (r"B200", {"bf16": 2250.0, "fp8": 4500.0, "tf32": 1125.0, "fp32": 75.0}),
    (r"A100", {"bf16": 312.0, "tf32": 156.0, "fp32": 19.5}),  # no FP8 units
    (r"L40S", {"bf16": 362.0, "fp8": 733.0, "tf32": 183.0, "fp32": 91.6}),
    (r"L40\b", {"bf16": 181.0, "fp8": 362.0, "tf32": 90.5, "fp32": 90.5}),
    (r"\bL4\b", {"bf16": 121.0, "fp8": 242.5, "tf32": 60.0, "fp32": 30.3}),
    (r"RTX 4090", {"bf16": 165.2, "fp8": 330.3, "tf32": 82.6, "fp32": 82.6}),
    (r"RTX 5090", {"bf16": 209.5, "fp8": 419.0, "tf32": 104.8, "fp32": 104.8}),
]


def known_peak_tflops(device_name: str, kind: str) -> float | None:
    """The dense peak of ``kind`` ("bf16", "fp16", "fp8", "tf32", "fp32") for a GPU name as
    torch.cuda.get_device_name gives it, else None (unknown card, or no such units)."""
    kind = "bf16" if kind == "fp16" else kind  # the same tensor-core rate
    if "Laptop" in device_name:  # "RTX 4090 Laptop GPU" is a smaller chip: far below the desktop
        return None
    for pattern, peaks in _TABLE:
        if re.search(pattern, device_name):
            return peaks.get(kind)
    return None


MFU_FORMULA = (
    "MFU = tokens/s per GPU x FLOPs per token / peak; FLOPs per token = 6N + 12 L H T "
    "(N matmul weights incl. the head, L layers, H width, T sequence; PaLM, appendix B)"
)
