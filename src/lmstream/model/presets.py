"""Model sizes by name, for ``lmstream orchestrate --model-size`` and the tests.

Each preset is a dict of :class:`lmstream.config.ModelConfig` keyword arguments (the ``model:``
section of training.yaml), so a preset can be written into a YAML as is. The vocabulary size is
not part of a preset: it comes from the tokenizer. Parameter counts below are for a 50k vocabulary
with tied embeddings (the defaults), and are checked by tests/unit/model/test_transformer.py.

:data:`CPU_RECIPES` holds the training settings that make a preset run as written on a CPU
(``tiny``); the other presets keep the seed's GPU recipe (see ``lmstream.orchestrate``).

Shapes follow GPT-2 / GPT-3 (4x GELU MLP, head size 64-80) so the counts match their names:
"125m" is GPT-2 small, "350m" GPT-2 medium, "760m" GPT-3 XL-like. "1b" is the seed document's
``model:`` section exactly; with a 4x GELU MLP it has about 1.1B parameters (1.0B without the
embedding), which is what the seed calls "1B".
"""

from __future__ import annotations

import os
from typing import Any

from lmstream.config import ModelConfig
from lmstream.errors import ConfigError

PRESETS: dict[str, dict[str, Any]] = {
    # CPU tests and the <5-minute CPU demo: ~3.2M parameters plus the embedding.
    "tiny": {
        "hidden_size": 256,
        "intermediate_size": 1024,
        "num_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "max_position_embeddings": 1024,
    },
    # ~124M (GPT-2 small).
    "125m": {
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_layers": 12,
        "num_attention_heads": 12,
        "num_key_value_heads": 12,
        "max_position_embeddings": 2048,
    },
    # ~354M (GPT-2 medium).
    "350m": {
        "hidden_size": 1024,
        "intermediate_size": 4096,
        "num_layers": 24,
        "num_attention_heads": 16,
        "num_key_value_heads": 16,
        "max_position_embeddings": 2048,
    },
    # ~757M.
    "760m": {
        "hidden_size": 1536,
        "intermediate_size": 6144,
        "num_layers": 24,
        "num_attention_heads": 16,
        "num_key_value_heads": 16,
        "max_position_embeddings": 2048,
    },
    # The seed's model section, field for field: ~1.11B (1.01B non-embedding).
    "1b": {
        "hidden_size": 2048,
        "intermediate_size": 8192,
        "num_layers": 20,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
        "max_position_embeddings": 2048,
        "attn_dropout": None,
        "residual_dropout": 0.0,
        "rope_mode": None,
        "rope_theta": None,
    },
    # ~2.96B.
    "3b": {
        "hidden_size": 2560,
        "intermediate_size": 10240,
        "num_layers": 36,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
        "max_position_embeddings": 2048,
    },
}


def model_preset(name: str) -> ModelConfig:
    """The ModelConfig of a named preset (vocab_size left null: the tokenizer decides it)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown model size '{name}'; choose one of: {', '.join(PRESETS)}")
    return ModelConfig(**PRESETS[name])


# The rest of training.yaml for presets meant to run on a CPU, as dotted-key overrides of the
# seed's GPU recipe. Sized for a 2-core CPU with the tiny preset and a vocabulary of ~20k (the
# demo corpus at orchestrate's default --vocab-size): 8 x 128 tokens per step take ~0.6 s at
# the ~90 GFLOP/s fp32 this CPU reaches, so 100 steps plus evaluations take a minute or two on
# a quiet machine and stay under ten minutes on one shared with other jobs (3-5x slower), and
# the loss falls from ln(vocab) by several nats within them (measured: BENCHMARKS.md). The seed's recipe (accumulation 32, 300,000 steps, evaluation every 4,500) would not log a
# single line within the hour on a CPU.
CPU_RECIPES: dict[str, dict[str, Any]] = {
    "tiny": {
        "data.batch_size": 8,
        "data.gradient_accumulation_steps": 1,
        "data.sequence_length": 128,
        # The whole demo corpus (~4,600 documents) fits in one window: a full shuffle.
        "data.shuffle_buffer_size": 4096,
        # A small model learns fast at a high rate; the demo's settings (measured there).
        "optimizer.learning_rate": 2.0e-3,
        "optimizer.weight_decay": 0.1,
        "optimizer.beta2": 0.99,
        "scheduler.warmup_steps": 10,
        "scheduler.total_steps": 100,
        "scheduler.min_lr": 2.0e-4,
        "runtime.precision": "fp32",  # CPUs without native bf16 run bf16 matmuls 50-300x slower
        "runtime.log_every_n_steps": 5,
        "runtime.checkpoint.every_n_steps": 50,
        "runtime.checkpoint.max_keep": 2,
        "runtime.evaluation.every_n_steps": 25,
        "runtime.evaluation.max_batches": 8,
        "runtime.evaluation.best.max_keep": 1,
        "runtime.logging.tensorboard_flush_every_n": 10,
    },
}


def cpu_loader_workers(cores: int | None = None) -> int:
    """DataLoader workers for a CPU recipe on a machine with ``cores`` cores (default: this one).

    One worker tokenizes ~1M tokens/s and a CPU step of the tiny preset eats ~2k tokens per
    second, so one worker overlaps tokenizing with the step with a wide margin; more would only
    take cores from the matmuls. A single-core machine has nothing to overlap with: 0.
    """
    cores = cores if cores is not None else (os.cpu_count() or 1)
    return 1 if cores >= 2 else 0
