"""training.yaml's `data:` section (see lmstream.config)."""

from __future__ import annotations

from pydantic import Field, model_validator

from lmstream.config_base import (
    ResolvedGlob,
    ResolvedPath,
    _Section,
)
from lmstream.config_sources import (
    FilesSourceConfig,
    check_mixture,
)

# ---------------------------------------------------------------------------------------- data


class DataConfig(_Section):
    """Batches and the data pipeline (seed: `data:`)."""

    train_shards: list[ResolvedGlob] = Field(
        default_factory=list,
        description="Files mode only (no streaming_config.json): local files or globs (txt, jsonl, parquet, csv, .gz/.zst) or token shards.",
    )
    validation_shards: list[ResolvedGlob] = Field(
        default_factory=list, description="Files mode only: validation files or globs."
    )
    mixture: list[FilesSourceConfig] | None = Field(
        default=None,
        description="Files mode only, instead of train_shards: several sources, each with name, weight (token share), train_shards and validation_shards.",
    )
    batch_size: int = Field(ge=1, description="Sequences per micro-batch per rank.")
    gradient_accumulation_steps: int = Field(
        default=1, ge=1, description="Micro-batches per optimizer step."
    )
    shuffle_buffer_size: int = Field(
        default=0,
        ge=0,
        description="Shuffling, not a buffer: each pass reads the source's shards (files) in a seeded order, 16 at a time in blocks of N/16 documents, each from a seeded point from the second epoch on, and each data worker emits every window of N of its documents in a seeded order (all new each epoch); 0 = source order.",
    )
    num_workers: int = Field(
        default=0,
        ge=0,
        description="DataLoader worker processes per rank (tokenization runs in them).",
    )
    cache_dir: ResolvedPath | None = Field(
        default=None,
        description="Cache folder for the datasets library and the tokenized validation set (orchestrate writes WORKSPACE/cache/EXP); null = the datasets library's default cache, and the validation set in the run folder.",
    )
    sequence_length: int = Field(ge=1, description="Tokens per training sequence.")
    validation_documents: int = Field(
        default=1000,
        ge=0,
        description="Documents held out for validation when the source has no validation split: the first N clean documents (within streaming_config.json's max_samples); orchestrate sizes it from the documents it read within --max-samples (5%, at most 1,000), raised until every source's held-out documents hold evaluation's rows in tokens (up to a quarter of a source).",
    )

    @model_validator(mode="after")
    def _check_mixture(self) -> DataConfig:
        if self.mixture is not None:
            if self.train_shards or self.validation_shards:
                raise ValueError(
                    "mixture: give the files under each source's train_shards and "
                    "validation_shards, not also data.train_shards/validation_shards"
                )
            try:
                check_mixture(self.mixture)
            except ValueError as exc:
                raise ValueError(f"mixture: {exc}") from None  # the path adds "data."
        return self
