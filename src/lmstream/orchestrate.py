"""`lmstream orchestrate`: stream a source, train the tokenizer, write a ready-to-train experiment.

Step 3 of the seed workflow. The documents flow from :class:`lmstream.data.sources.DocumentStream`
in batches straight into the ``tokenizers`` trainer (no text touches the disk); then the
experiment's files are written in the seed's layout (see :mod:`lmstream.workspace`):
tokenizer.json/vocab.json/merges.txt, streaming_config.json (streaming mode only),
special_tokens.txt and a training.yaml whose paths are relative to its own folder, so a workspace
can be moved or mounted elsewhere.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from pydantic import BaseModel

from lmstream.config import (
    CheckpointConfig,
    EvaluationConfig,
    LoggingConfig,
    ModelConfig,
    OptimizerConfig,
    SchedulerConfig,
    dump_streaming_config,
    load_training_config,
)
from lmstream.data.sources import DocumentStream, SourceSpec, open_dataset
from lmstream.data.validation import holdout_size
from lmstream.errors import ConfigError, DataSourceError
from lmstream.model.presets import (
    CPU_RECIPES,
    PRESETS,
    budget_schedule,
    cpu_loader_workers,
    learning_rate_by_size,
)
from lmstream.orchestrate_holdout import size_holdout
from lmstream.orchestrate_options import OrchestrateOptions
from lmstream.orchestrate_report import mixture_lines, reasons
from lmstream.orchestrate_sources import plan_sources
from lmstream.tokenizer import (
    check_special_tokens,
    count_special_text,
    dump_special_tokens,
    save_tokenizer,
    train_bpe,
)
from lmstream.tokenizer_sample import MixtureSample
from lmstream.workspace import ExperimentPaths


@dataclass
class OrchestrateResult:
    paths: ExperimentPaths
    documents: int
    bytes: int
    skipped: dict[str, int]
    special_text: int  # documents quoting a special token (encoded as plain text)
    retries: int
    vocab_size: int
    seconds: float
    files: list[Path]
    vocab_requested: int | None = None  # --vocab-size, to say when the corpus gave fewer
    max_samples: int | None = None  # --max-samples, to say when the source ran out before it
    mixture: list[str] = field(default_factory=list)  # per-source lines of a mixture's sample
    holdout: list[str] = field(default_factory=list)  # the holdout raised, or too small: why


def _prepare_folders(paths: ExperimentPaths, overwrite: bool, check_only: bool = False) -> None:
    """Refuse an existing experiment without ``overwrite``; with it, move the previous files
    (checkpoints and metrics of a trained run included) into RUN/abandoned/<time>/, saying so:
    never deleted. ``check_only``: refuse now, move nothing yet (before the long streaming)."""
    from lmstream.train.run_folder import abandon_experiment, check_unlocked

    folders = (paths.tokenizer_dir, paths.run_dir, _token_root(paths))
    existing = [p for p in folders if p.exists() and any(p.iterdir())]
    if existing and not overwrite:
        raise ConfigError(
            f"experiment {paths.experiment!r} already exists ({existing[0]}); pass --overwrite "
            "to replace it (its files move into RUN/abandoned/) or choose another --experiment"
        )
    if existing and check_only:
        check_unlocked(paths.run_dir)  # a training run holds it: refuse before streaming
        # Moving needs write access to each folder (root included: a read-only mount stops it
        # too); found now, not as a traceback after the streaming and the tokenizer.
        for folder in {paths.run_dir, *existing}:
            if folder.exists() and not os.access(folder, os.W_OK | os.X_OK):
                raise ConfigError(
                    f"--overwrite: {folder} is not writable, so the previous files cannot be "
                    "moved into RUN/abandoned/; nothing was moved or deleted"
                )
    elif existing:
        moved = abandon_experiment(paths.run_dir, paths.tokenizer_dir, _token_root(paths))
        if moved:
            print(moved, flush=True)
    paths.ensure()


def orchestrate(opts: OrchestrateOptions) -> OrchestrateResult:
    """Stream, train the tokenizer and write the experiment's files (see the module docstring)."""
    paths = ExperimentPaths.create(opts.workspace, opts.experiment)
    specials = check_special_tokens(opts.special_tokens)
    stream_cfg, sources, specs = plan_sources(opts, paths)
    if any(p.exists() for p in (paths.run_dir, paths.tokenizer_dir, _token_root(paths))):
        _prepare_folders(paths, opts.overwrite, check_only=True)  # fail before streaming
    start = time.perf_counter()
    streams = []
    for i in range(len(sources)):
        try:
            streams.append(_open_stream(opts, sources, specs, i, check=True))
        except DataSourceError as err:
            raise _naming(err, sources, specs, i) from None
    sample = MixtureSample(
        streams,
        [s.weight for s in sources],
        [s.max_samples for s in sources],
        opts.batch_size,
        reopen=lambda i: _open_stream(opts, sources, specs, i),
    )
    limit = opts.max_samples if len(sources) == 1 else None
    progress = _Progress(sample, limit, enabled=opts.progress, specials=specials)
    try:
        with progress:
            tok = train_bpe(progress.batches(), opts.vocab_size, specials)
    except DataSourceError as err:  # a read, or a re-open, of the source being read failed
        raise _naming(err, sources, specs, sample.reading) from None
    _check_documents(sample, sources, specs)
    _prepare_folders(paths, opts.overwrite)
    save_tokenizer(tok, paths.tokenizer_dir)
    dump_special_tokens(specials, paths.special_tokens)
    files = [paths.tokenizer_json, paths.vocab_json, paths.merges_txt, paths.special_tokens]
    if opts.stream:
        dump_streaming_config(stream_cfg, paths.streaming_config)
        files.append(paths.streaming_config)
    shards = _pretokenize(opts, specs[0], tok, paths) if opts.pretokenize else None
    # The holdout is a share of what each source holds within its max_samples: a source that
    # ended its first pass in the sample is known to hold no more than that pass gave (a
    # --max-samples it never reached would hold out all of a small file, and training would
    # refuse the recipe).
    sizes = [s.max_samples for s in sources]
    for index, _ in sample.ran_out:
        sizes[index] = sample.streams[index].documents
    # A source with a validation_split is not held out: its size must not bound the others'.
    held = [n for n, s in zip(sizes, sources, strict=True) if not s.validation_split] or sizes
    holdout = min(holdout_size(n) for n in held)
    holdout_lines: list[str] = []
    if shards is None:  # token shards hold their documents' tokens; text is measured here
        row, rows = _validation_rows(paths, opts, stream_cfg.data_files, tok.get_vocab_size())
        sized = size_holdout(holdout, sources, specs, sizes, tok, row, rows)
        holdout, holdout_lines = sized.documents, sized.lines
    write_training_yaml(paths, opts, tok.get_vocab_size(), stream_cfg.data_files, shards, holdout)
    files.append(paths.training_yaml)
    return OrchestrateResult(
        paths=paths,
        documents=sample.documents,
        bytes=sample.bytes,
        skipped=dict(sample.skipped),
        special_text=progress.special_text,
        retries=sample.retries,
        vocab_size=tok.get_vocab_size(),
        seconds=time.perf_counter() - start,
        files=files,
        vocab_requested=opts.vocab_size,
        max_samples=limit,
        mixture=mixture_lines(sample, sources) if len(sources) > 1 else [],
        holdout=holdout_lines,
    )


def _open_stream(
    opts: OrchestrateOptions, sources: list, specs: list[SourceSpec], i: int, check: bool = False
) -> DocumentStream:
    """Source ``i`` from its start: its first pass, and again each time a mixture's sample reads
    it again (as training repeats it). ``check``: its validation_split must exist too (checked
    once, before streaming)."""
    source, spec = sources[i], specs[i]
    dataset = open_dataset(spec, source.split)
    if check and source.validation_split:
        open_dataset(spec, source.validation_split)
    return DocumentStream(dataset, source.text_field, max_chars=opts.max_chars,
                          batch_size=opts.batch_size)  # fmt: skip


def _naming(
    err: DataSourceError, sources: list, specs: list[SourceSpec], i: int | None
) -> DataSourceError:
    """A mixture's failed open or read of source ``i``, in one line that names the source: some
    messages ("unknown split 'test'", a file URL that failed) do not say which source it was."""
    if len(sources) == 1 or i is None:
        return err
    return DataSourceError(f"source {sources[i].name!r} ({specs[i].path}): {err}")


def _validation_rows(
    paths: ExperimentPaths, opts: OrchestrateOptions, data_files: list[str] | None, vocab: int
) -> tuple[int, int]:
    """(tokens per validation row, rows per source) of the training.yaml about to be written."""
    written = training_yaml_dict(paths, opts, data_files, vocab_size=vocab)
    evaluation = EvaluationConfig.model_validate(written["runtime"]["evaluation"])
    return written["data"]["sequence_length"] + 1, evaluation.num_sequences


def _check_documents(sample: MixtureSample, sources: list, specs: list[SourceSpec]) -> None:
    """A source (of weight above 0) that gave the tokenizer no document: one line naming it."""
    for stream, source, spec in zip(sample.streams, sources, specs, strict=True):
        if stream.documents == 0 and source.weight > 0:
            where = spec.path if len(sources) == 1 else f"source {source.name!r} ({spec.path})"
            too_long = set(stream.skipped) == {"too_long"}  # the field is right: raise the limit
            hint = "raise --max-chars" if too_long else "check --text-field and the source"
            raise DataSourceError(
                f"{where}: no usable documents (skipped: {reasons(stream.skipped) or 'none'}); "
                + hint
            )


class _Progress:
    """tqdm bar over the sample with samples/s and MB/s (out of --max-samples for one source)."""

    def __init__(
        self, docs: MixtureSample, max_samples: int | None, enabled: bool, specials: list[str]
    ):
        self.docs, self.max_samples, self.enabled = docs, max_samples, enabled
        self.specials, self.special_text = specials, 0
        self.bar = None
        self.start = time.perf_counter()

    def __enter__(self) -> _Progress:
        if self.enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=self.max_samples, unit=" samples", dynamic_ncols=True)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.close()

    def batches(self) -> Iterator[list[str]]:
        """Document batches for the trainer, counted as they pass."""
        for batch in self.docs.batches():
            self._update(batch)
            yield batch

    def _update(self, batch: list[str]) -> None:
        self.special_text += count_special_text(batch, self.specials)
        if self.bar is None:
            return
        seconds = max(time.perf_counter() - self.start, 1e-9)
        self.bar.set_postfix_str(f"{self.docs.bytes / seconds / 1e6:.1f} MB/s", refresh=False)
        self.bar.update(len(batch))


# ------------------------------------------------------------------------------- training.yaml


def training_yaml_dict(
    paths: ExperimentPaths,
    opts: OrchestrateOptions,
    data_files: list[str] | None,
    validation_documents: int | None = None,
    vocab_size: int | None = None,
) -> dict:
    """The seed's training.yaml with this experiment's paths, relative to runs/EXP/; a preset
    meant for CPUs (tiny) gets its CPU recipe instead of the seed's GPU settings.
    ``validation_documents``: each source's holdout (default: sized from --max-samples).
    ``vocab_size``: the trained tokenizer's (default --vocab-size), which --tokens chinchilla
    counts: training sizes the embedding from the tokenizer, not from the flag."""

    def rel(path: Path) -> str:
        return os.path.relpath(path, paths.run_dir)

    model = dict(PRESETS[opts.model_size])
    longest = model.get(
        "max_position_embeddings", ModelConfig.model_fields["max_position_embeddings"].default
    )
    seq_len = min(2048, longest)
    train_shards: list[str] = []
    validation_shards: list[str] = []
    if not opts.stream:
        for entry in data_files or []:
            name, sep, pattern = entry.partition("=")
            if sep and name.isidentifier() and not os.path.exists(entry):
                target = train_shards if name == opts.split else validation_shards
                if name in (opts.split, opts.validation_split):
                    target.append(_rel_glob(pattern, paths.run_dir))
            else:
                train_shards.append(_rel_glob(entry, paths.run_dir))
    out = {
        "model": model,
        "tokenizer": {
            "tokenizer_json": rel(paths.tokenizer_json),
            "vocab": rel(paths.vocab_json),
            "merges": rel(paths.merges_txt),
            "special_tokens": rel(paths.special_tokens),
        },
        "data": {
            "train_shards": train_shards,
            "validation_shards": validation_shards,
            "batch_size": 2,
            "gradient_accumulation_steps": 32,
            "shuffle_buffer_size": 65536,
            "num_workers": 8,
            "cache_dir": rel(paths.cache_dir),
            "sequence_length": seq_len,
            "validation_documents": (
                holdout_size(opts.max_samples)
                if validation_documents is None
                else validation_documents
            ),
        },
        "optimizer": {
            **_defaults(OptimizerConfig, "algorithm"),
            "learning_rate": 1.8e-4,
            "weight_decay": 0.01,
            **_defaults(OptimizerConfig, "beta1", "beta2", "epsilon"),
        },
        "scheduler": {
            **_defaults(SchedulerConfig, "strategy"),
            "warmup_steps": 3000,
            "total_steps": 300000,
            **_defaults(SchedulerConfig, "total_epochs"),
            "min_lr": 1.8e-5,
            **_defaults(SchedulerConfig, "max_lr"),
        },
        "runtime": {
            "seed": opts.seed,
            "precision": "bf16",  # the seed's GPU setting; CPU recipes set fp32
            "log_every_n_steps": 50,
            "checkpoint": {
                "directory": rel(paths.checkpoints_dir),
                "every_n_steps": 1500,
                **_defaults(CheckpointConfig, "every_n_epochs"),
                "max_keep": 10,
            },
            "evaluation": {
                "every_n_steps": 4500,
                **_defaults(EvaluationConfig, "every_n_epochs", "max_batches"),
                "best": {"directory": rel(paths.best_dir), "max_keep": 2},
            },
            "logging": {
                **_defaults(LoggingConfig, "enable_stdout"),
                "tensorboard": rel(paths.tensorboard_dir),
                **_defaults(LoggingConfig, "tensorboard_flush_every_n"),
            },
        },
    }
    size = opts.model_size
    _set_dotted(out, {**learning_rate_by_size(size), **CPU_RECIPES.get(size, {})})
    if opts.tokens is not None:  # after the CPU recipe: its batch shape decides the steps
        vocab = vocab_size if vocab_size is not None else opts.vocab_size
        _set_dotted(out, budget_schedule(size, vocab, opts.tokens, out, opts.ranks))
    if size in CPU_RECIPES:
        out["data"]["num_workers"] = cpu_loader_workers()
    return out


def _set_dotted(cfg: dict, overrides: dict) -> None:
    for dotted, value in overrides.items():
        *parents, leaf = dotted.split(".")
        node = cfg
        for key in parents:
            node = node[key]
        node[leaf] = value


def _defaults(section: type[BaseModel], *names: str) -> dict:
    """The schema's own defaults of these fields, written out in full as the seed's file does."""
    return {name: section.model_fields[name].default for name in names}


def _rel_glob(pattern: str, base: Path) -> str:
    return pattern if "://" in pattern else os.path.relpath(pattern, base)


def _token_root(paths: ExperimentPaths) -> Path:
    """Where --pretokenize writes the experiment's token shards."""
    return paths.workspace / "artifacts" / "tokens" / paths.experiment


def _pretokenize(opts: OrchestrateOptions, spec: SourceSpec, tok, paths: ExperimentPaths) -> dict:
    """Token shards of the training (and validation) split under artifacts/tokens/EXP/."""
    from lmstream.pretokenize import pretokenize_split

    root = _token_root(paths)
    if root.exists():
        shutil.rmtree(root)  # only reached with --overwrite or for a new experiment
    out = {}
    for key, split in (("train", opts.split), ("validation", opts.validation_split)):
        if split:
            out[key], n = pretokenize_split(
                spec, split, tok, root / key, max_samples=opts.max_samples,
                max_chars=opts.max_chars, batch_size=opts.batch_size,
            )  # fmt: skip
            print(f"pre-tokenized {n:,} documents of split {split!r} -> {out[key]}")
    return out


def write_training_yaml(
    paths: ExperimentPaths,
    opts: OrchestrateOptions,
    vocab_size: int,
    data_files: list[str] | None,
    token_shards: dict[str, Path] | None = None,
    validation_documents: int | None = None,
) -> None:
    """Write training.yaml and check that it loads with the project's own schema; a mixture's
    holdout (``validation_documents``, per source) is sized for its smallest source."""
    text = (
        f"# Written by `lmstream orchestrate` for experiment {paths.experiment!r} "
        f"(model size {opts.model_size}, tokenizer vocabulary {vocab_size}).\n"
        + (
            "# A CPU recipe: sized to finish in minutes on a few cores (see lmstream.model.presets).\n"
            if opts.model_size in CPU_RECIPES
            else ""  # the seed's recipe, header included, stays as it was
        )
        + "# Paths are relative to this file's folder. Edit freely, then run:\n"
        f"#   lmstream train --config {paths.training_yaml}\n"
    )
    data = training_yaml_dict(paths, opts, data_files, validation_documents, vocab_size)
    if token_shards:
        data["data"]["train_shards"] = [os.path.relpath(token_shards["train"], paths.run_dir)]
        if "validation" in token_shards:
            data["data"]["validation_shards"] = [
                os.path.relpath(token_shards["validation"], paths.run_dir)
            ]
    body = yaml.safe_dump(data, sort_keys=False)
    paths.training_yaml.write_text(text + body, encoding="utf-8")
    load_training_config(paths.training_yaml)  # a bug here must not reach the user's train run
