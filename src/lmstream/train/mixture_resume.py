"""What a resume may change in a data mixture: weights, and sources added or removed.

Each kept source (same name) continues from its saved position (``data/mixture.py``), so
its own settings (dataset, files, split, max_samples, ...) must not change; weights may, and
sources may come and go: the run prints one line saying so and the new weights apply from
the next step. A one-source run is the mixture of that one source (named as a mixture would
name it), so adding a second source to it is the same kind of change.
"""

from __future__ import annotations

from lmstream.config import StreamingConfig
from lmstream.config_sources import default_source_name, normalised_weights

# Per-source fields of streaming_config.json (version 1 holds them at the top level).
STREAM_SOURCE_FIELDS = (
    "dataset", "subset", "split", "validation_split", "text_field", "data_files", "revision",
    "max_samples",
)  # fmt: skip
FILES_FIELDS = ("data.train_shards", "data.validation_shards", "data.mixture")


def stream_sources(dump: dict) -> list[dict]:
    """A streaming_config.json dump (version 1 or 2) as a list of named, weighted sources."""
    # Version 2 keeps the per-source fields under `sources` only (a dump also lists their
    # top-level defaults, which the schema refuses beside `sources`).
    skip = {"mode", *(STREAM_SOURCE_FIELDS if dump.get("sources") else ())}
    sc = StreamingConfig.model_validate({k: v for k, v in dump.items() if k not in skip})
    sources = sc.source_list()
    return [
        {**src.model_dump(mode="json", exclude={"name", "weight"}), "name": src.name, "weight": w}
        for src, w in zip(sources, sc.weights(), strict=True)
    ]


def files_sources(flat: dict) -> list[dict]:
    """Files mode's sources from a flattened training config (``data.mixture`` or the one
    source of ``data.train_shards``)."""
    mixture = flat.get("data.mixture")
    if not mixture:
        train = list(flat.get("data.train_shards") or [])
        name = default_source_name(str(train[0])) if train else "train"
        val = list(flat.get("data.validation_shards") or [])
        return [{"name": name, "weight": 1.0, "train_shards": train, "validation_shards": val}]

    class _W:  # normalised_weights reads .weight
        def __init__(self, w: float):
            self.weight = w

    weights = normalised_weights([_W(m["weight"]) for m in mixture])
    return [
        {"name": m["name"], "weight": w, "train_shards": list(m["train_shards"]),
         "validation_shards": list(m.get("validation_shards") or [])}
        for m, w in zip(mixture, weights, strict=True)
    ]  # fmt: skip


def compare_sources(saved: list[dict], current: list[dict], keys) -> tuple[list[str], list[str]]:
    """(notes, breaking): one note line when weights or the set of sources changed; one
    breaking entry per changed setting (``keys``) of a kept source."""
    new = {s["name"]: s for s in current}
    if len(saved) == 1 and saved[0]["name"] not in new:
        # A one-source run's source goes by a default name; in the mixture it may have its
        # own. The same settings make it the same source (the loader matches it so, too).
        same = [n for n, s in new.items() if all(s.get(k) == saved[0].get(k) for k in keys)]
        if same:
            saved = [{**saved[0], "name": same[0]}]
    old = {s["name"]: s for s in saved}
    breaking = [
        f"source {name} {k}: {old[name].get(k)!r} -> {new[name].get(k)!r}"
        for name in old if name in new
        for k in keys if old[name].get(k) != new[name].get(k)
    ]  # fmt: skip
    # A new name over a removed source's settings is that source renamed: it would restart
    # from its first document (positions are kept by name) and train on it a second time.
    breaking += [
        f"source {name} renamed from {gone!r} (the same settings): it would restart from its "
        f"first document; keep the name {gone!r}"
        for name in new if name not in old
        for gone in old if gone not in new and all(
            old[gone].get(k) == new[name].get(k) for k in keys)
    ]  # fmt: skip
    changes = [
        f"{name} {old[name]['weight']:.3g} -> {new[name]['weight']:.3g}"
        for name in old
        if name in new and abs(old[name]["weight"] - new[name]["weight"]) > 1e-12
    ]
    changes += [f"added {name} ({new[name]['weight']:.3g})" for name in new if name not in old]
    changes += [f"removed {name}" for name in old if name not in new]
    if not changes:
        return [], breaking
    added = [name for name in new if name not in old]
    # what best/ compares new evaluations with (checkpointer.BestCheckpoints)
    best = (
        f"best/ restarts its comparison (its checkpoints have no val_loss for {added[0]}; "
        "they stay in best/)"
        if added
        else "best/ compares with its checkpoints' per-source val_loss re-weighted likewise"
    )
    return [
        f"data mixture changed on resume ({'; '.join(changes)}): kept sources continue from "
        f"their saved positions, the new weights apply from the next step; {best}"
    ], breaking
