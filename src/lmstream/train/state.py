"""What a checkpoint restores besides the weights: counters, RNG states, optimizer state, and the
check that a resumed config can still reproduce the interrupted run.

Everything here round-trips through ``torch.load(weights_only=True)``: only tensors, numbers,
strings, lists, tuples and dicts (numpy's RNG key becomes a tensor).
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn

from lmstream import distributed as dist
from lmstream.config import TrainingConfig
from lmstream.data.loader import SOURCE_KEYS
from lmstream.errors import CheckpointError
from lmstream.train.mixture_resume import (
    FILES_FIELDS,
    STREAM_SOURCE_FIELDS,
    compare_sources,
    files_sources,
    stream_sources,
)


@dataclass
class TrainState:
    """Counters of the run. ``step`` = optimizer updates done (skipped non-finite steps excluded)."""

    step: int = 0
    tokens_seen: int = 0
    epoch: int = 0
    micro_batches_seen: int = 0
    skipped_steps: int = 0
    nonfinite_streak: int = 0
    best_val_loss: float | None = None
    steps_per_epoch: int | None = None
    source_tokens: dict[str, int] | None = None  # a mixture's target tokens per source
    spike_history: list = field(default_factory=list)  # [loss, grad_norm] (train/spike_guard.py)
    # The last step evaluated: a resume at it does not evaluate it again (a run that ended by
    # total_steps at an epoch's last step and resumes by epochs ends that epoch first).
    evaluated_step: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TrainState:
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)


def capture_rng() -> dict:
    """Python, numpy, torch CPU and CUDA generator states (dropout and shuffles draw from them)."""
    version, internal, gauss = random.getstate()
    np_state = np.random.get_state(legacy=False)
    state = {
        "python": [version, list(internal), gauss],
        "numpy": {
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": "MT19937",
            "state": {"key": np_state["key"].numpy().astype(np.uint32), "pos": np_state["pos"]},
            "has_gauss": np_state["has_gauss"],
            "gauss": np_state["gauss"],
        }
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        saved = state["cuda"]
        if len(saved) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(saved)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The optimizer state keyed by parameter names and unsharded (independent of parallelism)."""
    return dist.full_optimizer_state_dict(model, optimizer)


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Load a name-keyed optimizer state: the saved moments, with this config's settings.

    torch's load_state_dict also restores each group's settings (weight_decay, betas, eps,
    momentum...), so a value changed in training.yaml before --resume would be silently ignored;
    the groups keep the ones the optimizer was just built with (the lr is the schedule's anyway)."""
    configured = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    _load_optimizer_state(model, optimizer, state)
    for group, settings in zip(optimizer.param_groups, configured, strict=True):
        group.update(settings)


def _load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Unsharded models map names back to the optimizer's own indices (torch's
    set_optimizer_state_dict asserts on a CPU model without a process group)."""
    plain = dist.unwrap(model)
    if dist._is_sharded(plain):
        dist.load_full_optimizer_state_dict(model, optimizer, state)
        return
    name_of = {id(p): name for name, p in plain.named_parameters()}
    index = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            index[name_of[id(p)]] = len(index)
    try:
        converted = {
            "state": {index[name]: value for name, value in state["state"].items()},
            "param_groups": [
                {**g, "params": [index[name] for name in g["params"]]}
                for g in state["param_groups"]
            ],
        }
        optimizer.load_state_dict(converted)
    except (KeyError, ValueError) as exc:
        raise CheckpointError(
            f"the checkpoint's optimizer state does not match this model/optimizer ({exc})"
        ) from None


# Fields whose change makes the resumed run differ from the uninterrupted one.
_BREAKING_PREFIXES = ("model.",)
_BREAKING_FIELDS = {
    "data.batch_size",
    "data.sequence_length",
    "data.gradient_accumulation_steps",
    "data.shuffle_buffer_size",
    "data.num_workers",
    "data.train_shards",
    "data.validation_shards",
    "data.validation_documents",
    "runtime.seed",
    "optimizer.algorithm",
}


def _flatten(data: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def check_resume_config(saved: TrainingConfig, current: TrainingConfig) -> list[str]:
    """Raise CheckpointError naming the fields whose change breaks an exact resume; return
    one line per safe change (more total_steps, logging intervals, paths, ...) to report.

    Both configs must have ``model.vocab_size`` resolved to the real vocabulary.
    """
    old = _flatten(saved.model_dump(mode="json"))
    new = _flatten(current.model_dump(mode="json"))
    notes, mixed = [], []
    if old.get("data.mixture") or new.get("data.mixture"):
        # A files-mode mixture: weights and the set of sources may change (mixture_resume.py).
        notes, mixed = compare_sources(
            files_sources(old), files_sources(new), ("train_shards", "validation_shards")
        )
        for k in FILES_FIELDS:
            old.pop(k, None), new.pop(k, None)
    changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    breaking = [k for k in changed if k.startswith(_BREAKING_PREFIXES) or k in _BREAKING_FIELDS]
    if breaking or mixed:
        details = "; ".join(
            [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in breaking]
            + [f"data.mixture {m}" for m in mixed]
        )
        raise CheckpointError(
            f"cannot resume: the config changed in a way that breaks the run ({details}); "
            "restore these values, or start a new run without --resume"
        )
    return notes + [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed]


# What the data source must keep on resume (streaming_config.json, or files mode's marker):
# the loader's own list, which it also checks against its saved position. Changing any of these
# feeds the resumed run other documents, or another validation set whose val_loss would be
# compared with the old one's in best/. A mixture may change its weights and sources
# (mixture_resume.py); its kept sources' settings fall under the same rule.
_SOURCE_BREAKING_FIELDS = SOURCE_KEYS


def check_resume_data_source(saved: dict | None, current: dict | None) -> list[str]:
    """The data-source counterpart of :func:`check_resume_config`: raise CheckpointError naming
    the streaming_config.json fields whose change breaks the run (the same rule files mode
    applies to data.train_shards); return one line per allowed change (stream_batch_size,
    retries, ...). A checkpoint written before the source was recorded (``saved`` None) is not
    compared."""
    if saved is None or current is None:
        return []
    notes, mixed = [], []
    if "streaming" == saved.get("mode") == current.get("mode") and (
        saved.get("sources") or current.get("sources")
    ):
        notes, mixed = compare_sources(
            stream_sources(saved), stream_sources(current), _SOURCE_BREAKING_FIELDS
        )
        drop = {*STREAM_SOURCE_FIELDS, "sources", "version"}
        saved = {k: v for k, v in saved.items() if k not in drop}
        current = {k: v for k, v in current.items() if k not in drop}
    changed = sorted(k for k in saved.keys() | current.keys() if saved.get(k) != current.get(k))
    breaking = [k for k in changed if k in _SOURCE_BREAKING_FIELDS]
    if breaking or mixed:
        details = "; ".join(
            [f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in breaking] + mixed
        )
        raise CheckpointError(
            f"cannot resume: the data source changed ({details}; streaming_config.json "
            "or files mode); restore these values, or start a new run without --resume"
        )
    return notes + [
        f"streaming_config.json {k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in changed
    ]
