"""runtime.precision: fp8 refuses in one line where it cannot run (CPU, GPUs older than compute
8.9), through the real CLI on this CPU; converted models keep today's checkpoint format."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tests.support.models import tiny_model
from tests.support.training import (
    tiny_training_config,
    train_in_process,
    write_kjv_corpus,
    write_run,
)

from lmstream.errors import ConfigError
from lmstream.train.fp8 import convert_to_fp8, fp8_refusal
from lmstream.train.precision import build_precision


@pytest.mark.parametrize(
    ("device", "capability", "refused"),
    [("cpu", None, True), ("cuda", (8, 0), True), ("cuda", (8, 6), True),
     ("cuda", (8, 9), False), ("cuda", (9, 0), False), ("cuda", (10, 0), False)],
)  # fmt: skip
def test_fp8_needs_compute_capability_8_9(device, capability, refused):
    line = fp8_refusal(device, capability, "NVIDIA A100-SXM4-80GB")
    assert bool(line) is refused
    if refused:
        assert line.startswith("runtime.precision: fp8") and "\n" not in line
        assert "bf16" in line  # the fix


def test_fp8_on_this_cpu_is_refused():
    with pytest.raises(ConfigError, match=r"^runtime.precision: fp8 needs a CUDA GPU"):
        build_precision("fp8", torch.device("cpu"))


def test_the_train_command_refuses_fp8_on_cpu_in_one_line(tmp_path: Path, capsys):
    corpus = write_kjv_corpus(tmp_path, 20, 300)
    cfg = tiny_training_config(corpus, 2, **{"runtime.precision": "fp8"})
    assert train_in_process(write_run(tmp_path / "run", cfg)) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "runtime.precision: fp8" in err[0], err


def test_converted_model_keeps_the_checkpoint_format():
    # torchao (the fp8 extra) is not in the dev extra: with torch newer than it supports, importing
    # it on a CPU prints warnings into every command that imports transformers. Runs where it is
    # installed (the GPU image).
    pytest.importorskip("torchao")
    model = tiny_model(64, hidden_size=32, intermediate_size=64)
    before = {k: (v.shape, v.dtype) for k, v in model.state_dict().items()}
    convert_to_fp8(model)
    converted = [n for n, m in model.named_modules() if type(m).__name__ == "Float8Linear"]
    assert converted and all(n.startswith("blocks.") for n in converted)
    assert {k: (v.shape, v.dtype) for k, v in model.state_dict().items()} == before
