"""Model sizes by name, for ``lmstream orchestrate --model-size`` and the tests.

Each preset is a dict of :class:`lmstream.config.ModelConfig` keyword arguments (the ``model:``
section of training.yaml), so a preset can be written into a YAML as is. The vocabulary size is
not part of a preset: it comes from the tokenizer. Parameter counts below are for a 50k vocabulary
with tied embeddings (the defaults), and are checked by tests/unit/model/test_transformer.py.

Shapes follow GPT-2 / GPT-3 (4x GELU MLP, head size 64-80) so the counts match their names:
"125m" is GPT-2 small, "350m" GPT-2 medium, "760m" GPT-3 XL-like. "1b" is the seed document's
``model:`` section exactly; with a 4x GELU MLP it has about 1.1B parameters (1.0B without the
embedding), which is what the seed calls "1B".
"""

from __future__ import annotations

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
