"""runtime.precision: fp8: the transformer blocks' linear layers train in float8 through
torchao's float8 training API (dynamic tensorwise scaling), everything else under bf16
autocast.

The Float8Linear modules keep their fp32 weight as an ordinary parameter (float8 is a cast at
matmul time), so state_dict keys and dtypes are those of a bf16 run: checkpoints stay in the
same plain / sharded formats, and resume, export and generate need nothing new. Converted
before activation checkpointing, compile and FSDP (torchtitan's order).
"""

from __future__ import annotations

import torch
from torch import nn

from lmstream.errors import ConfigError

MIN_CAPABILITY = (8, 9)  # Ada (L40S, RTX 4090), Hopper, Blackwell: FP8 tensor cores


def fp8_refusal(device_type: str, capability: tuple[int, int] | None, name: str = "") -> str:
    """Why fp8 cannot run on this device (one line naming the field and the fix), or ''."""
    if device_type != "cuda":
        return (
            f"runtime.precision: fp8 needs a CUDA GPU with FP8 tensor cores (compute capability "
            f"8.9+: L40S, RTX 4090, H100/H200, B200); this run is on {device_type}: use fp32 "
            "(CPU) or bf16"
        )
    if capability is not None and tuple(capability) < MIN_CAPABILITY:
        major, minor = capability
        return (
            f"runtime.precision: fp8 needs compute capability 8.9+ (L40S, RTX 4090, H100/H200, "
            f"B200); {name or 'this GPU'} has {major}.{minor}: use bf16"
        )
    return ""


def check_fp8(device: torch.device) -> None:
    """Raise ConfigError when fp8 cannot run on ``device`` or torchao is missing."""
    capability = name = None
    if device.type == "cuda":
        capability = torch.cuda.get_device_capability(device)
        name = torch.cuda.get_device_name(device)
    refusal = fp8_refusal(device.type, capability, name or "")
    if refusal:
        raise ConfigError(refusal)
    try:
        import torchao.float8  # noqa: F401
    except ImportError:
        raise ConfigError(
            "runtime.precision: fp8 needs torchao: pip install 'lmstream[fp8]'"
        ) from None


def _convertible(module: nn.Module, fqn: str) -> bool:
    """Block linears whose sizes suit float8 matmuls (multiples of 16); the vocabulary head
    stays bf16, as in torchtitan (its logits feed the loss directly)."""
    if not isinstance(module, nn.Linear) or not fqn.startswith("blocks."):
        return False
    return module.in_features % 16 == 0 and module.out_features % 16 == 0


def convert_to_fp8(model: nn.Module) -> nn.Module:
    """The model with its block linears swapped for torchao's Float8Linear, in place."""
    from torchao.float8 import convert_to_float8_training

    return convert_to_float8_training(model, module_filter_fn=_convertible)
