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
    """DataLoader workers for a CPU recipe with ``cores`` cores (default: those this process may
    use).

    One worker tokenizes ~1M tokens/s, far more than a CPU step eats (the tiny preset: ~10k
    tokens/s), so a worker only pays off when it has a core the step's threads leave free. On
    two cores or fewer the step's OpenMP team fills them: inline loading costs ~0.8 ms of a
    ~50 ms step, while a worker preempts the team (3-4x the main thread's involuntary context
    switches) and adds its pickling and queue traffic; measured by bench/bench_cpu_small.py,
    inline ran ~5% faster than one worker on two cores. With more cores one worker overlaps
    tokenizing with the step; more would only take cores from the matmuls.
    """
    return 1 if (cores if cores is not None else usable_cores()) > 2 else 0


def usable_cores() -> int:
    """The cores this process may run on: a container or ``taskset`` pinned to 2 cores of a
    large host counts 2 (``os.cpu_count`` would count the host's)."""
    if hasattr(os, "sched_getaffinity"):  # Linux; elsewhere every core is usable
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


# Peak learning rates by size, in the style of GPT-3's table (Brown et al. 2020, "Language
# Models are Few-Shot Learners", Table 2.1: 125M 6.0e-4, 350M 3.0e-4, 760M 2.5e-4, 1.3B 2.0e-4,
# 2.7B 1.6e-4): larger models need smaller rates. "1b" keeps the seed's 1.8e-4 (between GPT-3's
# 1.3B and 2.7B rates; what the seed workflow trains with). "tiny" is not listed: its CPU
# recipe sets a measured 2e-3. The floor (min_lr) stays a tenth of the peak, as in the seed.
LEARNING_RATES: dict[str, float] = {
    "125m": 6.0e-4,
    "350m": 3.0e-4,
    "760m": 2.5e-4,
    "1b": 1.8e-4,
    "3b": 1.6e-4,
}
CHINCHILLA_TOKENS_PER_PARAMETER = 20  # Hoffmann et al. 2022 ("Chinchilla"), compute-optimal


def preset_parameters(name: str, vocab_size: int) -> int:
    """Parameters of preset ``name`` with a ``vocab_size`` vocabulary (built on the meta device:
    nothing allocated), embedding included, as Chinchilla counts them."""
    import torch

    from lmstream.model.transformer import Transformer

    with torch.device("meta"):
        return Transformer(model_preset(name), vocab_size).num_parameters()


def learning_rate_by_size(name: str) -> dict[str, Any]:
    """training.yaml overrides (dotted keys) giving preset ``name`` its peak rate and floor."""
    if name not in LEARNING_RATES:
        return {}
    lr = LEARNING_RATES[name]
    return {"optimizer.learning_rate": lr, "scheduler.min_lr": round(lr / 10, 12)}


def budget_schedule(
    name: str, vocab_size: int, tokens: str, cfg: dict, ranks: int = 1
) -> dict[str, Any]:
    """Overrides that spend a token budget (a count, or "chinchilla": 20 tokens per parameter)
    in the batch shape of training.yaml dict ``cfg``: ``scheduler.total_steps`` = budget /
    tokens per optimizer step of all ``ranks`` (the global batch), rounded up; a warmup that
    would not fit becomes a tenth of the run."""
    if tokens == "chinchilla":
        budget = CHINCHILLA_TOKENS_PER_PARAMETER * preset_parameters(name, vocab_size)
    else:
        budget = int(float(tokens))
    d = cfg["data"]
    per_step = d["batch_size"] * d["gradient_accumulation_steps"] * d["sequence_length"] * ranks
    steps = max(1, -(-budget // per_step))
    out: dict[str, Any] = {"scheduler.total_steps": steps}
    if cfg["scheduler"]["warmup_steps"] >= steps:
        out["scheduler.warmup_steps"] = steps // 10
    return out
