"""`lmstream eval`: validation loss and perplexity of a checkpoint, on the experiment's held-out
data or on files the user names.

The batches come from the same data pipeline as training (data/validation.py), so the number is
the one training logged as ``val_loss`` for the same checkpoint and data.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

from lmstream.config import TrainingConfig
from lmstream.errors import CheckpointError
from lmstream.workspace import STREAMING_CONFIG, TRAINING_YAML

# How far up from a checkpoint folder to look for its run folder (RUN/checkpoints/step-N).
_RUN_DIR_DEPTH = 3


def find_run_dir(checkpoint: Path, cfg: TrainingConfig) -> Path:
    """The run folder a checkpoint belongs to: the nearest parent holding training.yaml or
    streaming_config.json, else the folder of the run's metrics.jsonl."""
    for parent in list(checkpoint.parents)[:_RUN_DIR_DEPTH]:
        if (parent / STREAMING_CONFIG).is_file() or (parent / TRAINING_YAML).is_file():
            return parent
    if cfg.runtime.logging.metrics_jsonl is not None:
        return Path(cfg.runtime.logging.metrics_jsonl).parent
    raise CheckpointError(f"{checkpoint}: cannot find its run folder; pass --run-dir")


def trained_weights(folder: Path) -> dict[str, float] | None:
    """A streaming mixture's weights by source name as the checkpoint trained (and logged
    val_loss) with: its trainer state keeps them, while the run folder's streaming_config.json
    may since hold new ones for a resume that changes the mix. None: files mode (the
    checkpoint's own config holds them) or no trainer state."""
    import torch

    from lmstream.train.checkpoint import TRAINER_STATE_FILE
    from lmstream.train.mixture_resume import stream_sources

    path = folder / TRAINER_STATE_FILE
    if not path.is_file():
        return None
    source = torch.load(path, map_location="cpu", weights_only=True).get("data_source") or {}
    if source.get("mode") != "streaming" or not source.get("sources"):
        return None
    return {s["name"]: s["weight"] for s in stream_sources(source)}


def trained_commits(folder: Path) -> tuple:
    """The Hub commits the checkpoint's run read (``pinning.Pin``s; none for older checkpoints).
    The trainer state is memory-mapped: only this small entry is read, not the optimizer."""
    import torch

    from lmstream.data.pinning import recorded_pins
    from lmstream.train.checkpoint import TRAINER_STATE_FILE

    path = folder / TRAINER_STATE_FILE
    if not path.is_file():
        return ()
    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    return recorded_pins(state.get("data_commits"))


def _say_unrecorded_commits(folder: Path, sources: list) -> None:
    """One stderr line per Hub source the checkpoint records no commit for (older lmstream, or
    a run that could not pin): it was validated on the branch as it is now, maybe not the
    documents the run held out."""
    from lmstream.data.pinning import moving_hub_sources

    specs = [s for src in sources for s in (src.plan.spec, src.plan.validation_spec) if s]
    for spec in moving_hub_sources(specs):
        print(f"# {folder} records no commit for {spec.path}: validated on "
              f"{spec.revision or 'main'} as it is now, which may hold other documents than "
              "the run held out", file=sys.stderr)  # fmt: skip


def eval_config(cfg: TrainingConfig, data: list[str] | None, max_batches: int | None,
                batch_size: int | None, documents: int | None,
                max_sequences: int | None = None) -> TrainingConfig:  # fmt: skip
    """The checkpoint's config, pointed at ``data`` (files mode) and resized as asked.

    ``max_batches`` counts batches of the run's evaluation batch size and is turned into
    sequences first, so ``batch_size`` only changes how the same set is cut (speed and memory).
    """
    cfg = cfg.model_copy(deep=True)
    ev = cfg.runtime.evaluation
    if max_sequences is not None:
        ev.max_sequences = max_sequences
    elif max_batches is not None:
        ev.max_sequences = max_batches * ev.batch_size
    if batch_size is not None:
        ev.max_sequences = ev.num_sequences
        ev.batch_size = batch_size
    if documents is not None:
        cfg.data.validation_documents = documents
    if data:
        cfg.data.mixture = None  # the files given are one set, whatever the run trained on
        cfg.data.validation_shards = [
            str(Path(p).expanduser().absolute()) if "://" not in p else p for p in data
        ]
        cfg.data.train_shards = list(cfg.data.validation_shards)
    return cfg


def evaluate_checkpoint(
    checkpoint: str | Path,
    *,
    data: list[str] | None = None,
    max_batches: int | None = None,
    max_sequences: int | None = None,
    batch_size: int | None = None,
    documents: int | None = None,
    run_dir: str | Path | None = None,
    device: str = "auto",
    verify: bool = True,
    precision: str | None = None,
) -> dict:
    """Load a checkpoint and return ``{"val_loss", "val_ppl", "tokens", "sequences",
    "batches", "precision", "checkpoint"}`` (a mixture adds ``val_loss/NAME`` per source, and
    its ``val_loss`` is their weighted mean, the value training logs and ranks best by).

    ``precision`` defaults to the one the checkpoint was trained with (runtime.precision), so
    the number is the one training logged; fp32 master weights, autocast as in training.
    """
    import tempfile
    import warnings

    from lmstream.data.mixture_plan import resolve_sources
    from lmstream.data.pinning import reading_at
    from lmstream.data.validation import build_validation_batches
    from lmstream.distributed import pick_device
    from lmstream.train.checkpoint import load_checkpoint_model, load_checkpoint_tokenizer
    from lmstream.train.evaluate import evaluate
    from lmstream.train.mixture_metrics import evaluate_sources
    from lmstream.train.precision import build_precision

    dev = pick_device(device)
    model, cfg, folder = load_checkpoint_model(checkpoint, dev, verify=verify)
    tokenizer = load_checkpoint_tokenizer(folder, cfg)
    cfg = eval_config(cfg, data, max_batches, batch_size, documents, max_sequences)
    name = precision or cfg.runtime.precision
    if name == "fp8" and precision is None:  # master weights in plain linears: bf16 anywhere
        name = "bf16"
    with warnings.catch_warnings(record=True) as slow:  # bf16/fp16 on a CPU: say it our way
        warnings.simplefilter("always")
        autocast = build_precision(name, dev, cfg.runtime.tf32).autocast
    if slow and precision is None:
        print(f"# {name} (the checkpoint's precision) is slow on this CPU; --precision fp32 is "
              "faster, its val_loss slightly off the logged one", file=sys.stderr)  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="lmstream-eval-") as scratch:
        if data:
            # Files mode: a scratch run folder (no streaming_config.json); its cache dies with it.
            cfg.data.cache_dir = None
            rdir = Path(scratch)
        else:
            rdir = Path(run_dir) if run_dir else find_run_dir(folder, cfg)
        # The Hub commits the checkpoint trained on: its validation documents, as logged.
        with reading_at(() if data else trained_commits(folder)):
            batches = build_validation_batches(cfg, tokenizer, rdir)
            sources = resolve_sources(cfg, rdir)
        if not data:
            _say_unrecorded_commits(folder, sources)
        if len(sources) > 1:  # a mixture: val_loss/NAME and their weighted mean, as logged
            saved = trained_weights(folder)
            names, weights = zip(*(
                (s.name, s.weight if saved is None else saved.get(s.name, 0.0)) for s in sources
            ), strict=True)  # fmt: skip
            result = evaluate_sources(model, batches, dev, autocast, names, weights)
        else:
            result = evaluate(model, batches, dev, autocast)
    tokens = sum(int((b.targets != -100).sum()) for b in batches)
    sequences = sum(len(b.targets) for b in batches)
    result.update(
        tokens=tokens, sequences=sequences, batches=len(batches), precision=name,
        checkpoint=str(folder),
    )  # fmt: skip
    if math.isnan(result["val_loss"]):
        raise CheckpointError(f"{folder}: no validation tokens to evaluate on")
    return result
