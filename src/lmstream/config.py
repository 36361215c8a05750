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

from lmstream.config_base import (
    DEFAULT_ROPE_THETA,
    EOT_TOKEN,
    PAD_TOKEN,
    SPECIAL_TOKENS_DEFAULT,
    ResolvedGlob,
    ResolvedPath,
    _Section,
)
from lmstream.config_data import DataConfig
from lmstream.config_model import ModelConfig, TokenizerConfig
from lmstream.config_optim import OptimizerConfig, SchedulerConfig
from lmstream.config_runtime import (
    BestConfig,
    CheckpointConfig,
    EvaluationConfig,
    LoggingConfig,
    RuntimeConfig,
    SpikeGuardConfig,
    TrackioConfig,
    WandbConfig,
)
from lmstream.config_sources import (
    PER_SOURCE_FIELDS,
    FilesSourceConfig,
    StreamSourceConfig,
    StreamSourceFields,
    StreamSourcePass,
    check_mixture,
    check_validation_split,
    normalised_weights,
)
from lmstream.errors import ConfigError
from lmstream.workspace import BEST, CHECKPOINTS, METRICS

# The sections live in config_*.py modules (one per training.yaml section); this module is the
# schema's one entry point: the root models, load/dump, error lines, and every name re-exported.
__all__ = [
    "DEFAULT_ROPE_THETA", "EOT_TOKEN", "PAD_TOKEN", "SPECIAL_TOKENS_DEFAULT",
    "ResolvedGlob", "ResolvedPath",
    "ModelConfig", "TokenizerConfig", "DataConfig", "OptimizerConfig", "SchedulerConfig",
    "BestConfig", "CheckpointConfig", "EvaluationConfig", "LoggingConfig", "RuntimeConfig",
    "SpikeGuardConfig", "TrackioConfig", "WandbConfig",
    "FilesSourceConfig", "StreamSourceConfig", "TrainingConfig", "StreamingConfig",
    "format_validation_error", "parse_training_config", "load_training_config",
    "dump_training_config", "load_streaming_config", "dump_streaming_config",
    "load_special_tokens",
]  # fmt: skip

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


class _StreamingVersion(_Section):
    version: Literal[1, 2] = Field(
        default=1,
        description="Schema version of this file: 1 = one source, its fields at the top level; 2 = a mixture, its sources under `sources`.",
    )
    streaming: bool = Field(
        default=True, description="Stream from the source while training (always true here)."
    )


class _StreamingSources(_Section):
    sources: list[StreamSourceConfig] | None = Field(
        default=None,
        description="Version 2: the mixture's sources, each with name, weight and the per-source fields above (dataset, subset, split, validation_split, text_field, data_files, revision, max_samples).",
    )
    trust_remote_code: bool = Field(
        default=False,
        description="Allow the dataset's own loading script (only when asked on the command line).",
    )


class StreamingConfig(StreamSourcePass, _StreamingSources, StreamSourceFields, _StreamingVersion):
    """streaming_config.json, written by `lmstream orchestrate --stream` beside training.yaml.

    The per-source fields come from config_sources (declared once for both versions). The bases
    are laid out for the key order version 1 has always been written in (pydantic lists the
    last base's fields first): version, streaming, the source's fields, sources,
    trust_remote_code, max_samples, then the fields below.
    """

    dataset: str | None = Field(  # optional here: version 2 has it in each source
        default=None,
        description="Version 1: hub dataset id, local file/glob/folder, http(s) URL, or s3://, gs:// or hf:// URL (globs allowed).",
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
        misplaced = sorted(PER_SOURCE_FIELDS & self.model_fields_set)
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
        one = StreamSourceConfig(**{f: getattr(self, f) for f in PER_SOURCE_FIELDS})
        check_mixture([one])
        return [one]

    def weights(self) -> list[float]:
        """The sources' token proportions (sum 1), in source_list() order."""
        return normalised_weights(self.source_list())


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
    exclude = {"sources"} if cfg.version == 1 else set(PER_SOURCE_FIELDS)
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
