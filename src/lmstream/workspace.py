"""Where an experiment's files live: the seed's layout under a workspace folder.

    WORKSPACE/artifacts/tokenizer/EXP/{tokenizer.json, vocab.json, merges.txt}
    WORKSPACE/runs/EXP/{streaming_config.json, special_tokens.txt, training.yaml,
                        checkpoints/, best/, tensorboard/, metrics.jsonl,
                        abandoned/, train.lock}

``abandoned/<time>/`` holds what a rollback, ``train --restart`` or ``orchestrate --overwrite``
moved aside (never deleted); ``train.lock`` exists while a training process holds the run.

The workspace is ``--workspace DIR``, else ``$LMSTREAM_WORKSPACE``, else ``./workspace``.
Experiment names become folder names, so they are checked: no path separators, no ``..``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from lmstream.errors import ConfigError

WORKSPACE_ENV = "LMSTREAM_WORKSPACE"
DEFAULT_WORKSPACE = "workspace"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")

# A run folder's files, named here only (config defaults, checkpoints and tools use these).
TRAINING_YAML = "training.yaml"
STREAMING_CONFIG = "streaming_config.json"
SPECIAL_TOKENS = "special_tokens.txt"
CHECKPOINTS = "checkpoints"
BEST = "best"
TENSORBOARD = "tensorboard"
METRICS = "metrics.jsonl"


def resolve_workspace(flag: str | os.PathLike | None = None) -> Path:
    """The workspace folder: the flag, else $LMSTREAM_WORKSPACE, else ./workspace."""
    chosen = flag or os.environ.get(WORKSPACE_ENV) or DEFAULT_WORKSPACE
    return Path(chosen).expanduser().absolute()


def name_problem(name: str) -> str | None:
    """Why ``name`` is not a safe single folder (or metric) name, or None when it is."""
    if not name:
        return "is empty"
    if "/" in name or "\\" in name or os.sep in name:
        return f"{name!r} contains a path separator; use a plain name like 'my-run'"
    if ".." in name:
        return f"{name!r} contains '..'; use a plain name like 'my-run'"
    if not _NAME_RE.match(name):
        return (
            f"{name!r} is not a valid name; use 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return None


def check_experiment_name(name: str) -> str:
    """Return ``name`` if it is a safe single folder name, else raise a ConfigError saying why."""
    problem = name_problem(name)
    if problem == "is empty":
        raise ConfigError("--experiment: the experiment name is empty")
    if problem is not None:
        raise ConfigError(f"--experiment: {problem}")
    return name


def check_name(name: str, what: str) -> str:
    """Like check_experiment_name for other names (a mixture's sources): ValueError, so that a
    config schema reports it at the field."""
    problem = name_problem(name)
    if problem is not None:
        raise ValueError(f"the {what} {problem}" if problem == "is empty" else problem)
    return name


@dataclass(frozen=True)
class ExperimentPaths:
    """Every path of one experiment under one workspace."""

    workspace: Path
    experiment: str

    @classmethod
    def create(cls, workspace: str | os.PathLike | None, experiment: str) -> ExperimentPaths:
        return cls(resolve_workspace(workspace), check_experiment_name(experiment))

    @property
    def tokenizer_dir(self) -> Path:
        return self.workspace / "artifacts" / "tokenizer" / self.experiment

    @property
    def run_dir(self) -> Path:
        return self.workspace / "runs" / self.experiment

    @property
    def tokenizer_json(self) -> Path:
        return self.tokenizer_dir / "tokenizer.json"

    @property
    def vocab_json(self) -> Path:
        return self.tokenizer_dir / "vocab.json"

    @property
    def merges_txt(self) -> Path:
        return self.tokenizer_dir / "merges.txt"

    @property
    def streaming_config(self) -> Path:
        return self.run_dir / STREAMING_CONFIG

    @property
    def special_tokens(self) -> Path:
        return self.run_dir / SPECIAL_TOKENS

    @property
    def training_yaml(self) -> Path:
        return self.run_dir / TRAINING_YAML

    @property
    def checkpoints_dir(self) -> Path:
        return self.run_dir / CHECKPOINTS

    @property
    def best_dir(self) -> Path:
        return self.run_dir / BEST

    @property
    def tensorboard_dir(self) -> Path:
        return self.run_dir / TENSORBOARD

    @property
    def cache_dir(self) -> Path:
        return self.workspace / "cache" / self.experiment

    def ensure(self) -> ExperimentPaths:
        self.tokenizer_dir.mkdir(parents=True, exist_ok=True)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        return self
