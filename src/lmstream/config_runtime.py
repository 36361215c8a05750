"""training.yaml's `runtime:` section: checkpoints, evaluation, logging, precision,
devices and the spike guard (see lmstream.config)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from lmstream.config_base import (
    AutoOrBool,
    ResolvedPath,
    _Section,
)

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
    compile: AutoOrBool = Field(
        default="auto", description="torch.compile each transformer block; auto = on CUDA only."
    )
    chunked_loss: AutoOrBool = Field(
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
