"""The options of `lmstream orchestrate`, declared once: each field is a flag (see lmstream.flags).

The CLI's argparse options, their help and defaults, and every check on their values come from
this one model; :func:`lmstream.orchestrate.orchestrate` takes it as is. It imports no data
or training code, so `lmstream --help` stays fast.
"""

from __future__ import annotations

import json
import math

from pydantic import field_validator, model_validator

from lmstream.config import SPECIAL_TOKENS_DEFAULT
from lmstream.flags import Options, flag
from lmstream.model.presets import PRESETS
from lmstream.tokenizer import MIN_VOCAB_SIZE

SOURCE, TOKENIZER, EXPERIMENT = "source", "tokenizer", "experiment"
DEFAULT_DATASET = "HuggingFaceFW/fineweb"


class OrchestrateOptions(Options):
    """Everything `lmstream orchestrate` was asked to do (the command's flags, in help order)."""

    stream: bool = flag(
        False, "stream the source while training too (writes streaming_config.json)", group=SOURCE
    )
    dataset: list[str] | None = flag(
        None,
        "hub dataset id, local file/glob/folder, or http(s)/s3/gs/hf URL; repeat the flag for a "
        "mixture (default: HuggingFaceFW/fineweb)",
        group=SOURCE,
        repeat=True,
    )
    weights: list[float] | None = flag(
        None,
        "a mixture's token proportions, one per --dataset (default: equal)",
        group=SOURCE,
        metavar="W",
    )
    sources: str | None = flag(
        None,
        "YAML or JSON list of sources (name, weight, dataset, subset, split, ...): per-source "
        "control of a mixture; the other source flags fill in what a source leaves out",
        group=SOURCE,
        metavar="FILE",
    )
    subset: str | None = flag(
        None, "the dataset's configuration name", group=SOURCE, names=("--name",)
    )
    split: str = flag("train", "split to read", group=SOURCE)
    validation_split: str | None = flag(
        None, "split to validate on (default: a holdout of the stream)", group=SOURCE
    )
    data_files: list[str] | None = flag(
        None,
        "local files, globs or URLs (NAME=FILE names the split)",
        group=SOURCE,
        metavar="FILE",
    )
    text_field: str = flag("text", "record field that holds the text", group=SOURCE)
    revision: str | None = flag(None, "hub revision (branch, tag or commit)", group=SOURCE)
    trust_remote_code: bool = flag(
        False, "allow a dataset's own loading code (datasets < 4 only)", group=SOURCE
    )
    max_samples: int | None = flag(
        None,
        "stop after N documents, of each source in a mixture (default: the whole stream)",
        group=SOURCE,
        ge=1,
    )
    batch_size: int = flag(1000, "records fetched per batch", group=SOURCE, ge=1)
    max_chars: int = flag(1_000_000, "skip documents longer than this", group=SOURCE, ge=1)
    vocab_size: int = flag(50000, "vocabulary size, special tokens included", group=TOKENIZER)
    special_tokens: list[str] = flag(
        [],
        'extra special tokens (besides "<|endoftext|>" and "<|pad|>"), or a JSON list',
        group=TOKENIZER,
        metavar="TOKEN",
        nargs="*",
    )
    experiment: str = flag(help="experiment name (a folder name)", group=EXPERIMENT)
    workspace: str | None = flag(
        None,
        "workspace folder (default: $LMSTREAM_WORKSPACE, else ./workspace)",
        group=EXPERIMENT,
    )
    model_size: str = flag(
        "1b", "model section of training.yaml", group=EXPERIMENT, choices=list(PRESETS)
    )
    tokens: str | None = flag(
        None,
        "token budget: N tokens or 'chinchilla' (20 per parameter); sets scheduler.total_steps "
        "from the global batch of --ranks ranks",
        group=EXPERIMENT,
    )
    ranks: int = flag(
        1, "ranks (GPUs) the run will use, for --tokens: the global batch grows with them",
        group=EXPERIMENT, ge=1,
    )  # fmt: skip
    seed: int = flag(42, "runtime.seed and the stream's seed", group=EXPERIMENT, ge=0)
    overwrite: bool = flag(False, "replace an existing experiment's files", group=EXPERIMENT)
    pretokenize: bool = flag(
        False,
        "files mode: also write the data as token shards (memory-mapped by training)",
        group=EXPERIMENT,
    )
    progress: bool = flag(True, "no progress bar", group=EXPERIMENT, negate="--no-progress")

    @field_validator("special_tokens", mode="before")
    @classmethod
    def _json_list(cls, values: list[str]) -> list[str]:
        if isinstance(values, list) and len(values) == 1 and values[0].lstrip().startswith("["):
            try:
                return [str(t) for t in json.loads(values[0])]
            except json.JSONDecodeError as err:
                raise ValueError(f"not a JSON list ({err.msg})") from None
        return values

    @field_validator("vocab_size")
    @classmethod
    def _vocab_size(cls, value: int) -> int:
        least = MIN_VOCAB_SIZE + len(SPECIAL_TOKENS_DEFAULT)  # checked again with extra specials
        if value < least:
            raise ValueError(
                f"{value} is too small; byte-level BPE needs at least {least} "
                f"(256 bytes + {len(SPECIAL_TOKENS_DEFAULT)} special tokens)"
            )
        return value

    @field_validator("tokens")
    @classmethod
    def _tokens(cls, value: str | None) -> str | None:
        if value is None or value == "chinchilla":
            return value
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"{value!r} is not a token count (e.g. 2e9) or 'chinchilla'") from None
        if not number >= 1 or number == float("inf"):
            raise ValueError(f"{value!r}: the token budget must be a finite count of at least 1")
        return value

    @field_validator("model_size")
    @classmethod
    def _model_size(cls, value: str) -> str:
        if value not in PRESETS:
            raise ValueError(f"unknown size {value!r}; choose one of: {', '.join(PRESETS)}")
        return value

    @model_validator(mode="after")
    def _mode(self) -> OrchestrateOptions:
        if self.pretokenize and self.stream:
            raise ValueError(
                "--pretokenize: writes token shards for files mode; drop --stream to train from "
                "them, or drop --pretokenize to stream"
            )
        self._check_mixture()
        if self.validation_split is not None and self.validation_split == self.split:
            raise ValueError(
                f"--validation-split: {self.validation_split!r} is also --split; name another "
                "split, or leave it out for a holdout of the first documents"
            )
        if not self.stream and not self.data_files:
            raise ValueError(
                "no data: pass --stream (to stream --dataset) or --data-files FILE... (files mode)"
            )
        return self

    def _check_mixture(self) -> None:
        datasets = self.dataset or []
        if self.sources is not None and (self.dataset or self.weights or self.data_files):
            raise ValueError(
                "--sources: the file lists every source; drop --dataset, --weights and "
                "--data-files (or drop --sources)"
            )
        if self.weights is not None:
            if len(datasets) < 2:
                raise ValueError(
                    "--weights: weights mix several sources; repeat --dataset once per source "
                    "(or list them in --sources FILE)"
                )
            if len(self.weights) != len(datasets):
                raise ValueError(
                    f"--weights: {len(self.weights)} weights for {len(datasets)} datasets; "
                    "give one weight per --dataset, in the same order"
                )
            for dataset, weight in zip(datasets, self.weights, strict=True):
                if not math.isfinite(weight) or weight < 0:
                    raise ValueError(
                        f"--weights: {weight} for --dataset {dataset}: a weight is a finite "
                        "number >= 0"
                    )
            if not max(self.weights) > 0:  # each is >= 0 (above); a sum of 1e308s overflows
                raise ValueError(
                    "--weights: the weights sum to zero; give at least one dataset a weight above 0"
                )
        if len(datasets) > 1 and self.data_files:
            raise ValueError(
                "--data-files: with several --dataset it is unclear which source the files "
                "belong to; give each source its data_files in --sources FILE"
            )
        if (len(datasets) > 1 or self.sources is not None) and not self.stream:
            raise ValueError(
                "--stream: a mixture of datasets is streamed; pass --stream (files mode mixes "
                "through data.mixture in training.yaml)"
            )

    @property
    def datasets(self) -> list[str]:
        """The --dataset values, or the default dataset when none was given."""
        return list(self.dataset or [DEFAULT_DATASET])
