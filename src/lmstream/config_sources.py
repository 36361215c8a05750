"""The sources of a data mixture: one schema for streaming_config.json version 2's ``sources``
(streamed datasets) and training.yaml's ``data.mixture`` (files mode), with the rules they share:
names default to the dataset's last path component and are made unique, weights are finite,
non-negative and not all zero, and are normalised to token proportions.

Version 1 of streaming_config.json (one source, its fields at the top level) is read as a
mixture of that one source with weight 1, so the loader only ever sees a list of sources.
"""

from __future__ import annotations

import glob
import math
import os
import posixpath
import re
from pathlib import Path, PurePosixPath

from pydantic import Field, field_validator, model_validator

from lmstream.config_base import ResolvedGlob, _Section
from lmstream.workspace import check_name

# Extensions dropped from a dataset's last path component to name it (several may stack:
# "wiki.jsonl.gz" -> "wiki").
_DATA_EXTENSIONS = {
    ".jsonl", ".json", ".txt", ".parquet", ".csv", ".tsv", ".arrow",
    ".gz", ".zst", ".bz2", ".xz", ".lz4", ".bin", ".npy", ".tokens",
}  # fmt: skip
_GLOB_CHARS = re.compile(r"[*?\[\]{}]")


class _SourceCommon(_Section):
    """What every source of a mixture has besides where its data lives."""

    name: str | None = Field(
        default=None,
        description="The source's name in metrics (val_loss/NAME, tokens_seen/NAME); null = the dataset's last path component without extensions, made unique with -2, -3.",
    )
    weight: float = Field(
        default=1.0,
        ge=0,
        allow_inf_nan=False,
        description="Share of the training tokens (weights are normalised to sum to 1).",
    )

    @field_validator("weight", mode="before")
    @classmethod
    def _not_a_bool(cls, value: object) -> object:
        if isinstance(value, bool):  # YAML's `yes`/`true` would otherwise count as 1.0
            raise ValueError(f"a weight is a number, not {str(value).lower()}")
        return value

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str | None) -> str | None:
        if value is not None:
            check_name(value, "source name")
        return value


class StreamSourceFields(_Section):
    """Where one streamed source's documents come from, declared once for a version-2 source
    (StreamSourceConfig) and version 1's top level (``config.StreamingConfig``)."""

    dataset: str = Field(
        description="Hub dataset id, local file/glob/folder, http(s) URL, or s3://, gs:// or hf:// URL (globs allowed)."
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


class StreamSourcePass(_Section):
    """How much of a streamed source one pass reads. A class of its own (not a field of
    StreamSourceFields) only because version 1's file has ``trust_remote_code`` between the two
    and pydantic orders fields by class (``config.StreamingConfig``)."""

    max_samples: int | None = Field(
        default=None,
        ge=1,
        description="Documents per pass of the source: its first N clean documents (bad and too-long records not counted), which the tokenizer was trained on and the validation holdout comes from. null = the whole (possibly endless) stream.",
    )


# Every per-source field: version 1 has them at the top level, version 2 under `sources`.
PER_SOURCE_FIELDS = frozenset(StreamSourceFields.model_fields) | frozenset(
    StreamSourcePass.model_fields
)


class StreamSourceConfig(StreamSourcePass, StreamSourceFields, _SourceCommon):
    """One streamed source: everything a version-1 streaming_config.json holds for its one
    source, plus ``name`` and ``weight`` (fields in that order: pydantic lists a base's
    fields before its subclass's, the last base first)."""

    @model_validator(mode="after")
    def _validation_is_not_training(self) -> StreamSourceConfig:
        check_validation_split(self.split, self.validation_split)
        return self

    @property
    def location(self) -> str:
        """What names the source by default: its files when it is given by files."""
        return self.data_files[0] if self.data_files else self.dataset


class FilesSourceConfig(_SourceCommon):
    """One source of a files-mode mixture (training.yaml ``data.mixture``)."""

    train_shards: list[ResolvedGlob] = Field(
        min_length=1,
        description="Local files or globs (txt, jsonl, parquet, csv, .gz/.zst) or token shards of this source.",
    )
    validation_shards: list[ResolvedGlob] = Field(
        default_factory=list,
        description="This source's validation files or globs; empty = a holdout of its first documents.",
    )

    @property
    def location(self) -> str:
        return self.train_shards[0]


def check_validation_split(split: str, validation_split: str | None) -> None:
    """Validating on the split that trains would report a loss on training data as if held out."""
    if validation_split is not None and validation_split == split:
        raise ValueError(
            f"validation_split: {validation_split!r} is also the training split; name another "
            "split, or null for a holdout of the first documents"
        )


def default_source_name(location: str) -> str:
    """The dataset's last path component without extensions: ``HuggingFaceFW/fineweb-edu`` ->
    ``fineweb-edu``, ``/data/shakespeare.jsonl`` -> ``shakespeare``, ``/data/web/*.jsonl`` ->
    ``web`` (a glob names its folder). Characters a name may not hold become ``-``."""
    path = location.split("://", 1)[-1].split("?", 1)[0].rstrip("/")
    parts = [p for p in PurePosixPath(path.replace("\\", "/")).parts if p not in ("/", "")]
    while parts and _GLOB_CHARS.search(parts[-1]):
        parts.pop()
    stem = parts[-1] if parts else "source"
    while (suffix := PurePosixPath(stem).suffix.lower()) in _DATA_EXTENSIONS and stem != suffix:
        stem = stem[: -len(suffix)]
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", stem)
    stem = re.sub(r"\.{2,}", ".", stem).strip("-.") or "source"  # a name may not hold ".."
    if not stem[0].isalnum():
        stem = "s" + stem
    return stem[:128]


def name_sources(sources: list[_SourceCommon]) -> list[str]:
    """Each source's name: its own, else the default from its location; defaults that collide
    get ``-2``, ``-3``. Raises ValueError for two sources given the same name."""
    given = [s.name for s in sources if s.name is not None]
    duplicates = sorted({n for n in given if given.count(n) > 1})
    if duplicates:
        raise ValueError(f"duplicate source name {duplicates[0]!r}; give each source its own name")
    taken = set(given)
    names = []
    for source in sources:
        if source.name is not None:
            names.append(source.name)
            continue
        base = default_source_name(source.location)
        name, k = base, 1
        while name in taken:
            k += 1
            name = f"{base[: 128 - len(str(k)) - 1]}-{k}"  # a name holds at most 128 characters
        taken.add(name)
        names.append(name)
    return names


def normalised_weights(sources: list[_SourceCommon]) -> list[float]:
    """Weights as token proportions summing to 1; ValueError when they sum to zero."""
    weights = [s.weight for s in sources]
    top = max(weights, default=0.0)
    if not top > 0:
        raise ValueError(
            "the source weights sum to zero; give at least one source a weight above 0"
        )
    if top > 1e300:  # finite weights near 1e308 overflow their sum: scale them down first
        weights = [w / top for w in weights]
    total = math.fsum(weights)
    return [w / total for w in weights]


def check_mixture(sources: list[_SourceCommon]) -> None:
    """Fill in each source's name (in place) and check the weights; ValueError says what is wrong."""
    if not sources:
        raise ValueError("a mixture needs at least one source")
    names = name_sources(sources)
    normalised_weights(sources)
    for source, name in zip(sources, names, strict=True):
        source.name = name
    check_no_overlap(sources)


def check_no_overlap(sources: list[_SourceCommon]) -> None:
    """ValueError naming both sources when two of them read the same file (``sub/c.jsonl`` and
    ``sub/*.jsonl``, a folder and a file in it, one file listed twice): each source is mixed
    in at its own weight, so that file's documents would silently train twice as often.

    One file read for two different text fields (or subsets, splits, revisions) is two sources
    of documents, not an overlap. Remote data is compared by its written location only."""
    if len(sources) < 2:
        return  # one source: nothing to list (its folder need not be walked at each load)
    seen: dict[tuple, dict[str, str]] = {}
    for source in sources:
        owners = seen.setdefault(_reading(source), {})
        for data in _data_files(source):
            if data in owners and owners[data] != source.name:
                raise ValueError(
                    f"sources {owners[data]!r} and {source.name!r} both read {data}: its "
                    "documents would train twice as often as the weights say; list each file "
                    "in one source only, with the weight it should have"
                )
            owners.setdefault(data, str(source.name))


def _reading(source: _SourceCommon) -> tuple:
    """What, besides the files, picks a source's documents."""
    if isinstance(source, StreamSourceConfig):
        return (source.subset, source.split, source.text_field, source.revision)
    return ()


def _data_files(source: _SourceCommon) -> list[str]:
    """The files a source reads: local paths, globs and folders expanded to real paths;
    remote locations (hub ids and their repository paths, URLs) as written."""
    if isinstance(source, FilesSourceConfig):
        entries = [str(p) for p in source.train_shards]
    elif source.data_files:
        entries = []
        for entry in source.data_files:
            split, sep, pattern = entry.partition("=")  # "train=part-*.jsonl" picks a split
            if sep and split.isidentifier() and not os.path.exists(entry):
                if split != source.split:
                    continue
                entry = pattern
            local = "://" not in entry and Path(entry).expanduser().is_absolute()
            if not local and "://" not in entry:  # a path in the repository: ./a == a
                entry = posixpath.normpath(entry)
            entries.append(entry if local else f"{source.dataset}:{entry}")
    else:
        entries = [source.dataset]
    out: list[str] = []
    for entry in entries:
        path = os.path.expanduser(entry)
        if "://" in entry or not (os.path.isabs(path) or os.path.exists(path)):
            out.append(entry)  # remote, or a hub id
        elif glob.has_magic(path):
            out += [os.path.realpath(f) for f in sorted(glob.glob(path, recursive=True))
                    if os.path.isfile(f)]  # fmt: skip
        elif os.path.isdir(path):
            out += sorted(os.path.realpath(f) for f in Path(path).rglob("*") if f.is_file())
        else:
            out.append(os.path.realpath(path))
    return out
