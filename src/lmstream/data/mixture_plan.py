"""The sources a run trains on, each with its name, token weight and :class:`DataPlan`.

One source (streaming_config.json version 1, ``data.train_shards``) is exactly today's plan
(``documents.resolve_plan``: the same identity, hence the same validation cache and resume
check). A mixture (version 2's ``sources``, training.yaml's ``data.mixture``) gives each source
its own plan: its documents, its validation split or files, else a holdout of its own first
``data.validation_documents`` documents.

:func:`probe_sources` reads one document of every source before anything is written, so a
source that yields nothing or lacks its ``text_field`` fails in one line naming the source,
before any validation cache or checkpoint exists (issue #14, bad input).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lmstream.config import TrainingConfig, load_streaming_config
from lmstream.config_sources import default_source_name, normalised_weights
from lmstream.data.documents import DataPlan, TextSource, files_plan, resolve_plan, stream_plan
from lmstream.data.token_shards import TokenShards
from lmstream.errors import CheckpointError, ConfigError, DataSourceError, LmstreamError
from lmstream.workspace import STREAMING_CONFIG


@dataclass(frozen=True)
class SourcePlan:
    """One source of the run: ``weight`` is its token proportion (weights sum to 1)."""

    name: str
    weight: float
    plan: DataPlan


def resolve_sources(cfg: TrainingConfig, run_dir: Path) -> list[SourcePlan]:
    """The run's sources, in config order (the mixer breaks ties by this order)."""
    cache = str(cfg.data.cache_dir) if cfg.data.cache_dir else None
    sc_path = Path(run_dir) / STREAMING_CONFIG
    if sc_path.is_file():
        sc = load_streaming_config(sc_path)
        sources = sc.source_list()
        if sc.sources is None:  # version 1: today's plan, bit for bit
            return [SourcePlan(sources[0].name, 1.0, resolve_plan(cfg, run_dir))]
        return [
            SourcePlan(src.name, w, _stream_plan(sc, src, cache))
            for src, w in zip(sources, sc.weights(), strict=True)
        ]
    mixture = cfg.data.mixture
    if mixture is None:
        train = cfg.data.train_shards
        name = default_source_name(str(train[0])) if train else "train"
        return [SourcePlan(name, 1.0, resolve_plan(cfg, run_dir))]
    return [
        SourcePlan(
            m.name, w,
            files_plan([str(p) for p in m.train_shards], [str(p) for p in m.validation_shards],
                       cache, f"data.mixture[{k}].")
        )
        for k, (m, w) in enumerate(zip(mixture, normalised_weights(mixture), strict=True))
    ]  # fmt: skip


def _stream_plan(sc, src, cache: str | None) -> DataPlan:
    """A version-2 source's plan; its identity holds what decides its documents (the loader's
    SOURCE_KEYS) and the file-wide reading settings."""
    ident = {
        "mode": "streaming",
        **src.model_dump(mode="json", exclude={"name", "weight"}),
        "max_chars": sc.max_chars,
        "stream_batch_size": sc.stream_batch_size,
        "trust_remote_code": sc.trust_remote_code,
    }
    return stream_plan(src, sc, cache, ident)


def probe_sources(sources: list[SourcePlan]) -> None:
    """Read the first document of every source of a mixture: DataSourceError (exit 3) naming
    the source when one yields none or cannot be read (e.g. its text_field is missing)."""
    if len(sources) < 2:
        return  # one source: today's checks and messages
    for source in sources:
        plan = source.plan
        try:
            if plan.kind == "tokens":
                empty = len(TokenShards(plan.token_paths)) == 0
            else:
                reader = TextSource(plan.spec, plan.split, max_samples=plan.max_samples)
                reader.open(0, None)
                empty = not reader.read(1)
        except LmstreamError as err:
            raise tagged(err, source.name) from None
        if empty:
            where = plan.spec.path if plan.spec is not None else plan.token_paths[0]
            raise DataSourceError(
                f"data source {source.name!r} ({where}): yields no documents; check its "
                "dataset/train_shards, split and text_field, or remove it from the mixture"
            )


def tagged(err: LmstreamError, name: str) -> LmstreamError:
    """``err`` with its message prefixed by the source's name (same type, same exit code)."""
    text = f"data source {name!r}: {err}"
    return ConfigError(text) if isinstance(err, ConfigError) else type(err)(text)


def check_mixture_state(saved: dict, current: dict, keys) -> str | None:
    """Whether a saved data state's sources (``loader.TrainLoader._source``) can resume into
    the current ones: CheckpointError if a kept source's settings (``keys``) changed or a
    mixture's state meets a one-source run; for a one-source state resumed into a mixture,
    the name of the current source it read (None otherwise)."""
    if "sources" not in current:
        raise CheckpointError(
            "the checkpoint was trained on a mixture and this run has one source; its data "
            "state resumes only as a mixture: keep the other sources with weight 0"
        )
    now = current["sources"]
    if "sources" not in saved:  # a one-source run becomes a mixture: which source it was
        same = [name for name, ident in now.items() if ident == saved]
        if not same:
            raise CheckpointError(
                "the checkpoint's one source is none of this mixture's sources (the same "
                "dataset or files with the same settings); keep it to resume"
            )
        return same[0]
    changed = [
        f"{name}: " + "; ".join(
            f"{k} {ident.get(k)!r} -> {now[name].get(k)!r}"
            for k in keys if ident.get(k) != now[name].get(k)
        )
        for name, ident in saved["sources"].items() if name in now and ident != now[name]
    ]  # fmt: skip
    if changed:
        raise CheckpointError(
            f"the training source {changed[0]} changed since the checkpoint; its data "
            "position would point at other documents: restore it (only weights may change, "
            "and sources be added or removed), or start a new run without --resume"
        )
    return None
