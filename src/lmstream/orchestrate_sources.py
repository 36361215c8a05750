"""What `lmstream orchestrate` streams: its flags (or a --sources file) turned into named,
weighted sources and the streaming_config.json that records them.

One ``--dataset`` (the seed's command) gives version 1 of streaming_config.json, exactly as
before mixtures existed. Several ``--dataset`` flags, or a ``--sources FILE``, give version 2
with a ``sources`` list. The per-source flags (``--subset``, ``--split``, ``--validation-split``,
``--text-field``, ``--revision``, ``--max-samples``) apply to every ``--dataset``; in a sources
file they fill in only what a source leaves out, so the file gives per-source control.
Everything is checked here, before anything is streamed or written.
"""

from __future__ import annotations

import glob
import json
import os
from pathlib import Path

import yaml
from pydantic import ValidationError

from lmstream.config import StreamingConfig, format_validation_error
from lmstream.config_sources import StreamSourceConfig, check_mixture
from lmstream.data.sources import SourceSpec
from lmstream.errors import ConfigError
from lmstream.orchestrate_options import OrchestrateOptions
from lmstream.workspace import ExperimentPaths

# Flags that describe one source; with --sources they are defaults for what a source omits.
_PER_SOURCE_FLAGS = ("subset", "split", "validation_split", "text_field", "revision", "max_samples")


def plan_sources(
    opts: OrchestrateOptions, paths: ExperimentPaths
) -> tuple[StreamingConfig, list[StreamSourceConfig], list[SourceSpec]]:
    """streaming_config.json's content, its sources (named, in order) and how to open each."""
    common = {
        "trust_remote_code": opts.trust_remote_code,
        "max_chars": opts.max_chars,
        "stream_batch_size": opts.batch_size,
        "seed": opts.seed,
        "tokenizer_dir": os.path.relpath(paths.tokenizer_dir, paths.run_dir),
        "experiment": paths.experiment,
    }
    if opts.sources is None and len(opts.datasets) == 1:
        cfg = StreamingConfig(**_single_source(opts), **common)  # version 1, as it always was
    else:
        sources = _from_file(opts) if opts.sources is not None else _from_flags(opts)
        try:
            check_mixture(sources)
        except ValueError as err:
            where = opts.sources if opts.sources is not None else "--dataset"
            raise ConfigError(f"{where}: {err}") from None
        cfg = StreamingConfig(version=2, sources=sources, **common)
    listed = cfg.source_list()
    return cfg, listed, [SourceSpec.from_source(s, cfg) for s in listed]


def _single_source(opts: OrchestrateOptions) -> dict:
    files = [_absolute(f) for f in opts.data_files] if opts.data_files else None
    dataset = opts.datasets[0]
    if files and (not opts.stream or all(_is_file_entry(f) for f in files)):
        dataset = files[0]  # local files or URLs: they are the source, not a hub dataset's files
    return {
        "dataset": _absolute(dataset) if os.path.exists(dataset) else dataset,
        "data_files": files,
        **{name: getattr(opts, name) for name in _PER_SOURCE_FLAGS},
    }


def _from_flags(opts: OrchestrateOptions) -> list[StreamSourceConfig]:
    weights = opts.weights or [1.0] * len(opts.datasets)
    flags = {name: getattr(opts, name) for name in _PER_SOURCE_FLAGS}
    return [
        StreamSourceConfig(dataset=_local_or_remote(d), weight=w, **flags)
        for d, w in zip(opts.datasets, weights, strict=True)
    ]


def _from_file(opts: OrchestrateOptions) -> list[StreamSourceConfig]:
    """The --sources file's list, each entry checked against StreamSourceConfig's fields (an
    unknown key is an error naming the source and the key), paths made absolute."""
    path = Path(opts.sources).expanduser()
    if path.is_dir():
        raise ConfigError(f"--sources: {path}: is a folder; give the YAML or JSON file of sources")
    if not path.is_file():
        raise ConfigError(f"--sources: {path}: file not found")
    try:
        text = path.read_text(encoding="utf-8-sig")  # a BOM (Windows editors) is no JSON
        entries = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (UnicodeDecodeError, json.JSONDecodeError, yaml.YAMLError) as err:
        problem = getattr(err, "problem", None) or getattr(err, "msg", None) or str(err)
        raise ConfigError(f"--sources: {path}: not valid YAML or JSON: {problem}") from None
    if not isinstance(entries, list) or not entries:
        raise ConfigError(
            f"--sources: {path}: expected a non-empty list of sources, e.g. "
            "[{dataset: HuggingFaceFW/fineweb-edu, weight: 0.7}, {dataset: code.jsonl, weight: 0.3}]"
        )
    defaults = {name: getattr(opts, name) for name in _PER_SOURCE_FLAGS}
    sources, problems = [], []
    for index, entry in enumerate(entries):
        label = _label(entry, index)
        if not isinstance(entry, dict):
            problems.append(f"{path}: {label}: expected a mapping of source fields")
            continue
        try:
            source = StreamSourceConfig.model_validate({**defaults, **entry})
        except ValidationError as err:
            problems += format_validation_error(err, f"{path}: {label}", StreamSourceConfig)
            continue
        source.dataset = _local_or_remote(source.dataset, path.parent)
        # a hub dataset's data_files are paths in its repository, not beside the file
        hub = "://" not in source.dataset and not Path(source.dataset).is_absolute()
        if source.data_files and not hub:
            source.data_files = [_absolute(f, path.parent) for f in source.data_files]
        sources.append(source)
    if problems:
        raise ConfigError(problems)
    return sources


def _label(entry: object, index: int) -> str:
    if isinstance(entry, dict):
        for key in ("name", "dataset"):
            if isinstance(entry.get(key), str):
                return f"source {entry[key]!r}"
    return f"source {index + 1}"


def _local_or_remote(dataset: str, base: Path | None = None) -> str:
    """A local path or glob made absolute (relative to ``base`` when given: a sources file's
    folder), so training finds it from any working folder; hub ids and URLs stay as written
    (a hub id never holds a glob character)."""
    if "://" in dataset:
        return dataset
    given = Path(dataset).expanduser()  # "~/data/*.jsonl" is under the home folder, not base
    candidate = Path(base, given) if base is not None else given
    local = candidate.exists() or glob.has_magic(dataset)
    return _absolute(str(candidate)) if local else dataset


def _is_file_entry(entry: str) -> bool:
    pattern = entry.partition("=")[2] if "=" in entry and not os.path.exists(entry) else entry
    return "://" in pattern or Path(pattern).is_absolute()


def _absolute(path: str, base: Path | None = None) -> str:
    if "://" in path:
        return path
    name, sep, rest = path.partition("=")
    if sep and name.isidentifier() and not os.path.exists(path):
        return f"{name}={_absolute(rest, base)}"
    candidate = Path(path).expanduser()
    if base is not None and not candidate.is_absolute():
        candidate = base / candidate
    return str(candidate.absolute())
