"""The one schema for training.yaml and streaming_config.json (pydantic v2), with load and dump.

Field names follow the seed workflow's training.yaml (kept as tests/fixtures/seed_training.yaml) exactly, including the fields
it writes as ``null``: null always means "the documented default", and derived values are
properties (e.g. ``ModelConfig.kv_heads``), never mutated fields, so a dump of a loaded config
is the same file the user wrote, with paths made absolute.

Errors: every problem becomes one line ``FILE: dotted.field: what is wrong (given: VALUE)``
through :func:`format_validation_error`, raised as :class:`lmstream.errors.ConfigError`.
"""

from __future__ import annotations

import difflib
import json
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    Field,
    ValidationError,
    ValidationInfo,
    model_validator,
)

from lmstream.config_base import ResolvedGlob, ResolvedPath, _Section
from lmstream.config_sources import (
    FilesSourceConfig,
    StreamSourceConfig,
    check_mixture,
    check_validation_split,
    normalised_weights,
)
from lmstream.errors import ConfigError
from lmstream.workspace import BEST, CHECKPOINTS, METRICS

EOT_TOKEN = "<|endoftext|>"  # the document separator, the one special token the data needs
PAD_TOKEN = "<|pad|>"
SPECIAL_TOKENS_DEFAULT = [EOT_TOKEN, PAD_TOKEN]
DEFAULT_ROPE_THETA = 10000.0


# --------------------------------------------------------------------------------------- model


class ModelConfig(_Section):
    """The decoder-only transformer (seed: `model:`)."""

    hidden_size: int = Field(ge=1, description="Width of the residual stream.")
    intermediate_size: int = Field(ge=1, description="Width of the MLP's hidden layer.")
    num_layers: int = Field(ge=1, description="Number of transformer blocks.")
    num_attention_heads: int = Field(ge=1, description="Query heads per attention layer.")
    num_key_value_heads: int | None = Field(
        default=None,
        ge=1,
        description="Key/value heads (GQA when fewer than query heads); null = num_attention_heads.",
    )
    max_position_embeddings: int = Field(
        default=2048, ge=1, description="Longest sequence the model supports."
    )
    attn_dropout: float | None = Field(
        default=None, ge=0.0, lt=1.0, description="Dropout on attention probabilities; null = 0."
    )
    residual_dropout: float | None = Field(
        default=None,
        ge=0.0,
        lt=1.0,
        description="Dropout on each residual branch's output; null = 0.",
    )
    rope_mode: Literal["standard", "interleaved"] | None = Field(
        default=None,
        description="Rotary embedding layout: 'standard' rotates the two halves of each head (Llama/NeoX), "
        "'interleaved' rotates adjacent pairs (GPT-J); null = standard.",
    )
    rope_theta: float | None = Field(
        default=None, gt=0.0, description="RoPE base frequency; null = 10000."
    )
    activation: Literal["gelu", "swiglu"] = Field(
        default="gelu", description="MLP: 'gelu' (2 matrices) or 'swiglu' (3, gated)."
    )
    norm: Literal["layernorm", "rmsnorm"] = Field(
        default="layernorm", description="Normalization layer type (pre-norm)."
    )
    norm_eps: float = Field(
        default=1e-5, gt=0.0, lt=1.0, description="Epsilon of the normalization layers."
    )
    tie_embeddings: bool = Field(
        default=True, description="Share the input embedding with the output head."
    )
    init_std: float = Field(
        default=0.02,
        gt=0.0,
        description="Std of the normal weight init (residual projections scaled by 1/sqrt(2*num_layers)).",
    )
    vocab_size: int | None = Field(
        default=None, ge=2, description="Vocabulary size; null = taken from the tokenizer."
    )
    document_masking: bool = Field(
        default=False,
        description="Document-aware attention: in a packed row a token attends only to earlier "
        "tokens of its own document (documents end at <|endoftext|>); false = plain causal.",
    )
    document_positions: Literal["restart", "continue"] | None = Field(
        default=None,
        description="With document_masking: RoPE positions 'restart' at 0 in each document or "
        "'continue' along the row; null = restart. Needs document_masking.",
    )
    document_separator_id: int | None = Field(
        default=None,
        ge=0,
        description="With document_masking: the token id that ends a document; null = the "
        "tokenizer's <|endoftext|> (filled in at training setup, saved with checkpoints).",
    )
    qk_norm: bool = Field(
        default=False,
        description="RMSNorm on each head's queries and keys before RoPE (OLMo 2, Qwen3): "
        "bounds attention logits, steadier at high learning rates.",
    )

    @model_validator(mode="after")
    def _check_heads(self) -> ModelConfig:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size: {self.hidden_size} is not divisible by num_attention_heads "
                f"({self.num_attention_heads})"
            )
        if self.num_attention_heads % self.kv_heads:
            raise ValueError(
                f"num_key_value_heads: num_attention_heads ({self.num_attention_heads}) is not "
                f"divisible by num_key_value_heads ({self.kv_heads})"
            )
        if self.head_dim % 2:
            raise ValueError(
                f"hidden_size: head size hidden_size/num_attention_heads = {self.head_dim} must be even for RoPE"
            )
        return self._check_documents()

    def _check_documents(self) -> ModelConfig:
        for name in ("document_positions", "document_separator_id"):
            if getattr(self, name) is not None and not self.document_masking:
                raise ValueError(
                    f"{name}: applies only with document masking; set model.document_masking: "
                    f"true or remove {name}"
                )
        sep, vocab = self.document_separator_id, self.vocab_size
        if sep is not None and vocab is not None and sep >= vocab:
            raise ValueError(
                f"document_separator_id: {sep} is not a token id of the {vocab}-token "
                "vocabulary; set it to null to take the tokenizer's <|endoftext|>"
            )
        return self

    @property
    def kv_heads(self) -> int:
        return self.num_key_value_heads or self.num_attention_heads

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def theta(self) -> float:
        return self.rope_theta if self.rope_theta is not None else DEFAULT_ROPE_THETA

    @property
    def rope_layout(self) -> str:
        return self.rope_mode or "standard"

    @property
    def restart_positions(self) -> bool:
        """RoPE positions count from each document's start (document masking's default)."""
        return self.document_masking and self.document_positions != "continue"

    @property
    def attention_dropout(self) -> float:
        return self.attn_dropout or 0.0

    @property
    def dropout(self) -> float:
        return self.residual_dropout or 0.0


# ----------------------------------------------------------------------------------- tokenizer


class TokenizerConfig(_Section):
    """The experiment's tokenizer files (seed: `tokenizer:`)."""

    tokenizer_json: ResolvedPath = Field(
        description="tokenizer.json written by `lmstream orchestrate`."
    )
    vocab: ResolvedPath | None = Field(
        default=None, description="vocab.json (informational; tokenizer.json is what is loaded)."
    )
    merges: ResolvedPath | None = Field(
        default=None, description="merges.txt (informational; tokenizer.json is what is loaded)."
    )
    special_tokens: ResolvedPath | None = Field(
        default=None,
        description='special_tokens.txt: a JSON list such as ["<|endoftext|>", "<|pad|>"]; null = that list.',
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
        description="Documents held out for validation when the source has no validation split: the first N clean documents (within streaming_config.json's max_samples); orchestrate sizes it from the documents it read within --max-samples (5%, at most 1,000).",
    )

    @model_validator(mode="after")
    def _check_mixture(self) -> DataConfig:
        if self.mixture is not None:
            if self.train_shards or self.validation_shards:
                raise ValueError(
                    "data.mixture: give the files under each source's train_shards and "
                    "validation_shards, not also data.train_shards/validation_shards"
                )
            try:
                check_mixture(self.mixture)
            except ValueError as exc:
                raise ValueError(f"data.mixture: {exc}") from None
        return self


# ----------------------------------------------------------------------------------- optimizer


class OptimizerConfig(_Section):
    """The optimizer (seed: `optimizer:`)."""

    algorithm: Literal["adam_w", "sgd", "muon"] = Field(
        default="adam_w",
        description="'adam_w' (decoupled weight decay), 'sgd' (with momentum), or 'muon' "
        "(Muon for the blocks' 2-D matrices, AdamW for the rest; torch >= 2.9).",
    )
    learning_rate: float = Field(
        gt=0.0, description="Peak learning rate (unless scheduler.max_lr is set)."
    )
    weight_decay: float = Field(
        default=0.0,
        ge=0.0,
        description="Weight decay, applied to matrices only (not norms or biases).",
    )
    beta1: float = Field(default=0.9, ge=0.0, lt=1.0, description="AdamW beta1.")
    beta2: float = Field(default=0.95, ge=0.0, lt=1.0, description="AdamW beta2.")
    epsilon: float = Field(default=1e-8, gt=0.0, description="AdamW epsilon.")
    momentum: float = Field(default=0.9, ge=0.0, lt=1.0, description="SGD momentum.")
    max_grad_norm: float | None = Field(
        default=1.0,
        gt=0.0,
        description="Clip the global gradient norm to this; null = no clipping.",
    )
    z_loss: float = Field(
        default=0.0,
        ge=0.0,
        le=1.0,
        description="Weight of PaLM's auxiliary loss z_loss * mean(log(Z)^2) (1e-4 in PaLM); "
        "logged as z_loss; 0 = off.",
    )
    muon_learning_rate: float | None = Field(
        default=None,
        gt=0.0,
        le=1.0,
        description="Muon's peak learning rate (it follows the schedule's shape); null = 0.02.",
    )
    muon_momentum: float | None = Field(
        default=None, ge=0.0, lt=1.0, description="Muon's Nesterov momentum; null = 0.95."
    )

    @model_validator(mode="after")
    def _check_algorithm_fields(self) -> OptimizerConfig:
        muon_fields = [
            f for f in ("muon_learning_rate", "muon_momentum") if getattr(self, f) is not None
        ]
        if self.algorithm != "muon" and muon_fields:
            raise ValueError(
                f"{muon_fields[0]}: only used with algorithm: muon (algorithm is {self.algorithm!r})"
            )
        # The seed writes momentum: 0.9 with adam_w, and dumps keep it: only another value
        # under muon is a mistake worth stopping for (it would silently do nothing).
        if self.algorithm == "muon" and self.momentum != 0.9:
            raise ValueError(
                f"momentum: {self.momentum} is SGD's momentum, unused with algorithm: muon; "
                "set muon_momentum instead"
            )
        return self


# ----------------------------------------------------------------------------------- scheduler


class SchedulerConfig(_Section):
    """The learning-rate schedule (seed: `scheduler:`)."""

    strategy: Literal[
        "cosine_with_warmup", "linear_with_warmup", "constant_with_warmup", "warmup_stable_decay"
    ] = Field(
        default="cosine_with_warmup",
        description="Shape of the schedule after the linear warmup; warmup_stable_decay holds "
        "the peak, then decays over the last decay_steps (or decay_fraction of the run).",
    )
    warmup_steps: int = Field(
        default=0, ge=0, description="Optimizer steps of linear warmup from 0 to the peak."
    )
    total_steps: int | None = Field(
        default=None,
        ge=1,
        description="Optimizer steps of the whole run; null = derived from total_epochs.",
    )
    total_epochs: int | None = Field(
        default=None, ge=1, description="Passes over a finite stream; null = not limited by epochs."
    )
    min_lr: float | None = Field(default=None, ge=0.0, description="Floor of the decay; null = 0.")
    max_lr: float | None = Field(
        default=None, gt=0.0, description="Peak learning rate; null = optimizer.learning_rate."
    )
    decay_steps: int | None = Field(
        default=None, ge=1, description="warmup_stable_decay: optimizer steps of the final decay."
    )
    decay_fraction: float | None = Field(
        default=None,
        gt=0.0,
        le=1.0,
        description="warmup_stable_decay: the final decay as a fraction of total steps.",
    )
    decay_shape: Literal["linear", "cosine", "1-sqrt"] | None = Field(
        default=None,
        description="warmup_stable_decay: shape of the decay to min_lr; null = linear.",
    )

    @model_validator(mode="after")
    def _check_steps(self) -> SchedulerConfig:
        if self.total_steps is None and self.total_epochs is None:
            raise ValueError("total_steps: set total_steps or total_epochs (both are null)")
        if self.total_steps is not None and self.warmup_steps >= self.total_steps:
            raise ValueError(
                f"warmup_steps: {self.warmup_steps} must be smaller than total_steps ({self.total_steps})"
            )
        return self._check_decay()

    def _check_decay(self) -> SchedulerConfig:
        """The decay fields belong to warmup_stable_decay, which needs exactly one length."""
        given = [
            f
            for f in ("decay_steps", "decay_fraction", "decay_shape")
            if getattr(self, f) is not None
        ]
        if self.strategy != "warmup_stable_decay":
            if given:
                raise ValueError(
                    f"{given[0]}: only used with strategy: warmup_stable_decay "
                    f"(strategy is {self.strategy!r})"
                )
            return self
        if (self.decay_steps is None) == (self.decay_fraction is None):
            raise ValueError(
                "decay_steps: warmup_stable_decay needs exactly one of decay_steps or decay_fraction"
            )
        if (
            self.total_steps is not None
            and self.warmup_steps + self.decay_length(self.total_steps) > self.total_steps
        ):
            field = "decay_steps" if self.decay_steps is not None else "decay_fraction"
            raise ValueError(
                f"{field}: warmup_steps ({self.warmup_steps}) + decay "
                f"({self.decay_length(self.total_steps)}) exceed total_steps ({self.total_steps})"
            )
        return self

    def decay_length(self, total_steps: int) -> int:
        """warmup_stable_decay's decay in steps for a run of ``total_steps`` (0 otherwise)."""
        if self.decay_steps is not None:
            return self.decay_steps
        if self.decay_fraction is not None:
            return max(1, round(self.decay_fraction * total_steps))
        return 0


# ------------------------------------------------------------------------------------- runtime


class CheckpointConfig(_Section):
    directory: ResolvedPath | None = Field(
        default=None, description="Where step-NNNNNNNN folders go; null = RUN_DIR/checkpoints."
    )
    every_n_steps: int | None = Field(
        default=None, ge=1, description="Save every N optimizer steps (and always at the end)."
    )
    every_n_epochs: int | None = Field(
        default=None, ge=1, description="Save at the end of every N epochs of a finite stream."
    )
    max_keep: int | None = Field(
        default=3, ge=1, description="Newest checkpoints kept; null = keep all."
    )
    async_save: bool = Field(
        default=True,
        description="Write checkpoints in a background thread after a host copy of the state, "
        "so training goes on during the write (needs host RAM for one checkpoint); FSDP "
        "sharded checkpoints are always written synchronously.",
    )


class BestConfig(_Section):
    directory: ResolvedPath | None = Field(
        default=None,
        description="Where the best checkpoints by validation loss go; null = RUN_DIR/best.",
    )
    max_keep: int = Field(default=1, ge=1, description="Best checkpoints kept.")


class EvaluationConfig(_Section):
    every_n_steps: int | None = Field(
        default=None, ge=1, description="Evaluate every N optimizer steps (and at the end)."
    )
    every_n_epochs: int | None = Field(
        default=None, ge=1, description="Evaluate at the end of every N epochs."
    )
    max_batches: int = Field(
        default=32,
        ge=1,
        description="Validation set size in batches of evaluation.batch_size (not "
        "data.batch_size): max_batches x batch_size sequences, split across ranks.",
    )
    max_sequences: int | None = Field(
        default=None,
        ge=1,
        description="Validation set size in sequences; overrides max_batches when set.",
    )
    batch_size: int = Field(
        default=8, ge=1, description="Validation sequences per forward pass on each rank."
    )
    best: BestConfig = Field(default_factory=BestConfig)
    tasks: list[str] = Field(
        default_factory=list,
        description="lm-evaluation-harness tasks run at each evaluation on rank 0 (the `eval` "
        "extra), logged as eval/TASK/METRIC; [] = none.",
    )
    tasks_limit: int | None = Field(
        default=None, ge=1, description="Examples per harness task at each evaluation; null = all."
    )
    tasks_include_path: ResolvedPath | None = Field(
        default=None, description="Folder of local harness task YAMLs (--include-path)."
    )

    @property
    def num_sequences(self) -> int:
        """The validation set's size in sequences: the same whatever the training batch split,
        the world size or an evaluation's batch size (issue #21)."""
        if self.max_sequences is not None:
            return self.max_sequences
        return self.max_batches * self.batch_size


class WandbConfig(_Section):
    """Weights & Biases (the `wandb` extra)."""

    project: str = Field(description="W&B project the run logs to.")
    entity: str | None = Field(
        default=None, description="W&B team or user; null = the API key's default entity."
    )
    name: str | None = Field(default=None, description="Run name; null = W&B picks one.")
    mode: Literal["online", "offline"] = Field(
        default="online",
        description="online = stream to the W&B server; offline = files under WANDB_DIR to "
        "upload later with `wandb sync`.",
    )


class TrackioConfig(_Section):
    """Trackio, Hugging Face's local-first tracker (the `trackio` extra)."""

    project: str = Field(description="Trackio project (a local database under TRACKIO_DIR).")
    name: str | None = Field(default=None, description="Run name; null = Trackio picks one.")


class LoggingConfig(_Section):
    enable_stdout: bool = Field(default=True, description="Print metrics to stdout.")
    tensorboard: ResolvedPath | None = Field(
        default=None, description="TensorBoard log folder; null = no TensorBoard."
    )
    tensorboard_flush_every_n: int = Field(
        default=100, ge=1, description="Flush TensorBoard events every N logged steps."
    )
    metrics_jsonl: ResolvedPath | None = Field(
        default=None, description="JSON-lines metrics file; null = RUN_DIR/metrics.jsonl."
    )
    wandb: WandbConfig | None = Field(
        default=None, description="Log to Weights & Biases (rank 0); null = off."
    )
    trackio: TrackioConfig | None = Field(
        default=None, description="Log to Trackio (rank 0); null = off."
    )


class SpikeGuardConfig(_Section):
    """Loss-spike guard (`runtime.spike_guard:`), as OLMo-core's skip-step optimizer."""

    window: int = Field(
        default=100, ge=2, description="Steps of loss / gradient-norm history the statistics use."
    )
    threshold_sigma: float = Field(
        default=6.0,
        gt=0.0,
        description="Skip a step whose value is this many standard deviations above the mean.",
    )
    watch: Literal["loss", "grad_norm", "both"] = Field(
        default="both", description="Which values are checked."
    )


class RuntimeConfig(_Section):
    """How the run executes (seed: `runtime:`)."""

    seed: int = Field(default=42, ge=0, description="Seed for init, dropout and data shuffling.")
    precision: Literal["fp32", "bf16", "fp16", "fp8"] = Field(
        default="fp32",
        description="Compute precision (bf16/fp16: autocast with fp32 master weights; fp8: "
        "torchao float8 linear layers and bf16 elsewhere, on GPUs of compute capability 8.9+).",
    )
    log_every_n_steps: int = Field(
        default=10, ge=1, description="Log metrics every N optimizer steps."
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto", description="'auto' = cuda when available, else cpu."
    )
    compile: Literal["auto"] | bool = Field(
        default="auto", description="torch.compile each transformer block; auto = on CUDA only."
    )
    chunked_loss: Literal["auto"] | bool = Field(
        default="auto",
        description="Cross-entropy in chunks of tokens, never the full fp32 logits (same loss "
        "and gradients); auto = on CUDA only (on CPU the recomputed head matmul costs time).",
    )
    micro_batch: Literal["auto", "fixed"] | None = Field(
        default=None,
        description="auto = measure the fastest micro-batch that fits at start-up, keeping "
        "batch_size x accumulation x world; fixed = data.batch_size; null = auto on CUDA, "
        "fixed on CPU.",
    )
    memory_limit_gb: float | None = Field(
        default=None,
        gt=0.0,
        description="Memory per device the micro-batch search may plan for; null = 90% of the "
        "GPU's memory (on CPU: no limit).",
    )
    activation_checkpointing: bool = Field(
        default=False, description="Recompute block activations in backward to save memory."
    )
    parallelism: Literal["auto", "ddp", "fsdp"] = Field(
        default="auto",
        description="Multi-rank strategy under torchrun; auto = fsdp for models of 1B+ parameters, else ddp.",
    )
    tf32: bool = Field(
        default=True,
        description="fp32 on CUDA: TF32 tensor-core matmuls (7x the fp32 peak on A100/H100, "
        "10-bit mantissa inputs); false = full fp32 matmuls. MFU uses the peak of the one in use.",
    )
    peak_tflops: float | None = Field(
        default=None,
        gt=0.0,
        description="Device peak for MFU in the run's precision; null = detected for known GPUs.",
    )
    max_nonfinite_steps: int = Field(
        default=5,
        ge=1,
        description="Consecutive non-finite losses (steps skipped) before the run stops.",
    )
    spike_guard: SpikeGuardConfig | None = Field(
        default=None,
        description="Skip a step whose loss or gradient norm spikes (see spike_guard.*); null = off.",
    )
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)


# ---------------------------------------------------------------------------------------- root


class TrainingConfig(_Section):
    """training.yaml. ``run_dir`` is the YAML's own folder (where streaming_config.json is looked for)."""

    model: ModelConfig
    tokenizer: TokenizerConfig
    data: DataConfig
    optimizer: OptimizerConfig
    scheduler: SchedulerConfig
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)

    @model_validator(mode="after")
    def _cross_section(self, info: ValidationInfo) -> TrainingConfig:
        if self.data.sequence_length > self.model.max_position_embeddings:
            raise ValueError(
                f"data.sequence_length: {self.data.sequence_length} exceeds model.max_position_embeddings "
                f"({self.model.max_position_embeddings})"
            )
        if self.runtime.chunked_loss is True and self.optimizer.z_loss:
            raise ValueError(  # "auto" turns chunking off with a z-loss; an explicit true cannot
                "runtime.chunked_loss: true cannot be combined with optimizer.z_loss (the z-loss "
                "reads the full logits); set chunked_loss to auto or false"
            )
        if self.scheduler.min_lr is not None and self.scheduler.min_lr > self.peak_lr:
            raise ValueError(
                f"scheduler.min_lr: {self.scheduler.min_lr} is above the peak learning rate ({self.peak_lr})"
            )
        base = (info.context or {}).get("base_dir")
        if base is not None:  # fill path defaults relative to the run folder
            base = Path(base).absolute()
            rt = self.runtime
            if rt.checkpoint.directory is None:
                rt.checkpoint.directory = base / CHECKPOINTS
            if rt.evaluation.best.directory is None:
                rt.evaluation.best.directory = base / BEST
            if rt.logging.metrics_jsonl is None:
                rt.logging.metrics_jsonl = base / METRICS
        ck, best = self.runtime.checkpoint.directory, self.runtime.evaluation.best.directory
        if ck is not None and best is not None and Path(ck).absolute() == Path(best).absolute():
            raise ValueError(  # rotation would delete best copies and pruning regular ones
                f"runtime.evaluation.best.directory: {best} is also runtime.checkpoint.directory;"
                " give the best checkpoints their own folder (e.g. RUN/best)"
            )
        return self

    @property
    def peak_lr(self) -> float:
        return (
            self.scheduler.max_lr
            if self.scheduler.max_lr is not None
            else self.optimizer.learning_rate
        )

    @property
    def min_lr(self) -> float:
        return self.scheduler.min_lr if self.scheduler.min_lr is not None else 0.0

    def tokens_per_step(self, world_size: int = 1) -> int:
        d = self.data
        return d.batch_size * d.gradient_accumulation_steps * d.sequence_length * world_size


# ------------------------------------------------------------------------ streaming_config.json


class StreamingConfig(_Section):
    """streaming_config.json, written by `lmstream orchestrate --stream` beside training.yaml."""

    version: Literal[1, 2] = Field(
        default=1,
        description="Schema version of this file: 1 = one source, its fields at the top level; 2 = a mixture, its sources under `sources`.",
    )
    streaming: bool = Field(
        default=True, description="Stream from the source while training (always true here)."
    )
    dataset: str | None = Field(
        default=None,
        description="Version 1: hub dataset id, local file/glob/folder, http(s) URL, or s3://, gs:// or hf:// URL (globs allowed).",
    )
    subset: str | None = Field(
        default=None, description="The dataset's configuration name (hub `name`)."
    )
    split: str = Field(default="train", description="Split to train on.")
    validation_split: str | None = Field(
        default=None, description="Split to validate on; null = a fixed holdout from the stream."
    )
    text_field: str = Field(default="text", description="Record field holding the document text.")
    data_files: list[str] | None = Field(
        default=None, description="Explicit data files (local paths or URLs) for the source."
    )
    revision: str | None = Field(default=None, description="Hub revision (branch, tag or commit).")
    sources: list[StreamSourceConfig] | None = Field(
        default=None,
        description="Version 2: the mixture's sources, each with name, weight and the per-source fields above (dataset, subset, split, validation_split, text_field, data_files, revision, max_samples).",
    )
    trust_remote_code: bool = Field(
        default=False,
        description="Allow the dataset's own loading script (only when asked on the command line).",
    )
    max_samples: int | None = Field(
        default=None,
        ge=1,
        description="Documents per pass: the first N clean documents of the source (bad and too-long records not counted), the N the tokenizer was trained on; the validation holdout comes from within them. null = the whole (possibly endless) stream.",
    )
    max_chars: int = Field(
        default=1_000_000,
        ge=1,
        description="Documents longer than this (characters) are skipped, in orchestrate and in training alike.",
    )
    stream_batch_size: int = Field(
        default=1000, ge=1, description="Records fetched per batch from the source."
    )
    seed: int = Field(default=42, ge=0, description="Seed used when the stream was sampled.")
    tokenizer_dir: str | None = Field(
        default=None, description="Folder of the experiment's tokenizer files."
    )
    experiment: str | None = Field(default=None, description="Experiment name.")

    @model_validator(mode="after")
    def _check_version(self) -> StreamingConfig:
        if self.version == 1:
            if self.sources is not None:
                raise ValueError("sources: a mixture needs version: 2")
            if self.dataset is None:
                raise ValueError("dataset: missing (the source to stream)")
            check_validation_split(self.split, self.validation_split)
            return self
        misplaced = sorted(_PER_SOURCE_FIELDS & self.model_fields_set)
        if misplaced:
            raise ValueError(
                f"{misplaced[0]}: version 2 gives each source its own fields under `sources`"
            )
        if not self.sources:
            raise ValueError("sources: version 2 needs a non-empty list of sources")
        try:
            check_mixture(self.sources)
        except ValueError as exc:
            raise ValueError(f"sources: {exc}") from None
        return self

    def source_list(self) -> list[StreamSourceConfig]:
        """The sources, named: version 1's one source (weight 1) or version 2's list."""
        if self.sources is not None:
            return list(self.sources)
        one = StreamSourceConfig(**{f: getattr(self, f) for f in _PER_SOURCE_FIELDS})
        check_mixture([one])
        return [one]

    def weights(self) -> list[float]:
        """The sources' token proportions (sum 1), in source_list() order."""
        return normalised_weights(self.source_list())


_PER_SOURCE_FIELDS = frozenset(
    {"dataset", "subset", "split", "validation_split", "text_field", "data_files", "revision",
     "max_samples"}
)  # fmt: skip


# --------------------------------------------------------------------------------- load / dump


def _model_at(root: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    """The pydantic model class that a (partial) error location points into."""
    current: Any = root
    for part in loc:
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        field = current.model_fields.get(part) if isinstance(part, str) else None
        if field is None:
            return None
        current = _unwrap_model(field.annotation)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _unwrap_model(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _unwrap_model(arg)
        if found is not None:
            return found
    return None


def _short(value: Any) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def format_validation_error(err: ValidationError, source: str, root: type[BaseModel]) -> list[str]:
    """One line per problem: ``SOURCE: dotted.path: message (given: value)``."""
    lines = []
    for e in err.errors():
        loc = tuple(p for p in e["loc"] if p not in ("function-after",))
        msg = e["msg"].removeprefix("Value error, ")
        kind = e["type"]
        if (
            kind == "value_error"
            and ": " in msg
            and msg.split(": ", 1)[0].replace(".", "").replace("_", "").isalnum()
        ):
            # Cross-field checks name their field first ("field: message"); move it into the path.
            field, msg = msg.split(": ", 1)
            loc = loc + tuple(field.split("."))
        path = ".".join(str(p) for p in loc) or "(top level)"
        if kind == "extra_forbidden":
            parent = _model_at(root, loc[:-1])
            hint = ""
            if parent is not None:
                close = difflib.get_close_matches(str(loc[-1]), list(parent.model_fields), n=1)
                hint = (
                    f"; did you mean '{close[0]}'?"
                    if close
                    else f"; known keys: {', '.join(parent.model_fields)}"
                )
            lines.append(f"{source}: {path}: unknown key{hint}")
        elif kind == "missing":
            lines.append(f"{source}: {path}: required field is missing")
        elif kind in ("value_error", "assertion_error"):
            lines.append(f"{source}: {path}: {msg}")
        else:
            lines.append(f"{source}: {path}: {msg} (given: {_short(e.get('input'))})")
    return lines


def _read_mapping(path: Path, kind: str) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: {kind} file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path}: not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start}); "
            "save it as UTF-8"
        ) from None
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        where = ""
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            where = f" at line {mark.line + 1}, column {mark.column + 1}"
        elif isinstance(exc, json.JSONDecodeError):
            where = f" at line {exc.lineno}, column {exc.colno}"
        problem = getattr(exc, "problem", None) or getattr(exc, "msg", None) or str(exc)
        raise ConfigError(
            f"{path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'}{where}: {problem}"
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: expected a mapping of sections at the top level, got {type(data).__name__}"
        )
    return data


def parse_training_config(
    data: dict, base_dir: Path | None, source: str = "<config>"
) -> TrainingConfig:
    try:
        return TrainingConfig.model_validate(data, context={"base_dir": base_dir})
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, source, TrainingConfig)) from None


def load_training_config(path: str | Path) -> TrainingConfig:
    """Load, validate and resolve training.yaml (relative paths against the YAML's folder)."""
    path = Path(path).expanduser().absolute()
    return parse_training_config(_read_mapping(path, "training config"), path.parent, str(path))


def dump_training_config(cfg: TrainingConfig, path: str | Path | None = None) -> str:
    """The config as YAML (optionally written to ``path``). Loading it again gives an equal config."""
    text = yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False, default_flow_style=False)
    if path is not None:
        Path(path).write_text(text, encoding="utf-8")
    return text


def load_streaming_config(path: str | Path) -> StreamingConfig:
    path = Path(path).expanduser().absolute()
    data = _read_mapping(path, "streaming config")
    try:
        return StreamingConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, str(path), StreamingConfig)) from None


def dump_streaming_config(cfg: StreamingConfig, path: str | Path) -> None:
    """Version 1 as it always was (no `sources`); version 2 without the top-level per-source
    fields, which its sources hold."""
    exclude = {"sources"} if cfg.version == 1 else set(_PER_SOURCE_FIELDS)
    Path(path).write_text(
        json.dumps(cfg.model_dump(mode="json", exclude=exclude), indent=2) + "\n",
        encoding="utf-8",
    )


def load_special_tokens(path: Path | None) -> list[str]:
    """special_tokens.txt in the seed's format: a JSON list of strings."""
    if path is None:
        return list(SPECIAL_TOKENS_DEFAULT)
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: special tokens file not found")
    try:
        tokens = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"{path}: not a JSON list of strings ({exc.msg} at line {exc.lineno})"
        ) from None
    if not isinstance(tokens, list) or not all(isinstance(t, str) and t for t in tokens):
        raise ConfigError(
            f'{path}: expected a JSON list of non-empty strings, e.g. ["<|endoftext|>", "<|pad|>"]'
        )
    return tokens
