"""The README.md model card that `lmstream export` writes: the Hub's format (YAML metadata, then
Markdown), built from what the checkpoint and its run folder already hold.

Metadata: ``library_name: transformers``, ``pipeline_tag: text-generation``, the license when
given, the Hub datasets the run streamed, tags, and the harness results (eval_results.json
beside the checkpoint) as ``model-index`` entries, the Hub's field for benchmark scores. The
text gives the model size, tokenizer, tokens seen, sources, the last validation loss and the
same benchmark table.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lmstream.config import StreamingConfig, TrainingConfig
from lmstream.train import checkpoint as ckpt
from lmstream.workspace import STREAMING_CONFIG

EVAL_RESULTS_FILE = "eval_results.json"


@dataclass
class CardFacts:
    """What the card says; gathered by :func:`gather_facts`."""

    name: str
    architecture: str
    parameters: int
    vocab_size: int
    step: int
    tokens_seen: int | None = None
    val_loss: float | None = None
    sources: list[str] = field(default_factory=list)
    hub_datasets: list[str] = field(default_factory=list)
    benchmarks: dict[str, dict[str, float]] = field(default_factory=dict)
    license: str | None = None
    config: TrainingConfig | None = None


def _is_hub_id(dataset: str) -> bool:
    """OWNER/NAME of a Hub dataset, not a local path, glob or URL."""
    return (
        "://" not in dataset
        and dataset.count("/") == 1
        and not dataset.startswith((".", "/", "~"))
        and not any(ch in dataset for ch in "*?[")
        and not Path(dataset).exists()
    )


def _describe_source(src) -> str:
    """One source of streaming_config.json: dataset, subset, split."""
    # A local path is shown by its name: the card is written to be published, and the user's
    # absolute paths (home folder, mounts) are theirs, not the reader's.
    local = "://" not in src.dataset and not _is_hub_id(src.dataset)
    parts = [Path(src.dataset).name if local else src.dataset]
    if src.subset:
        parts.append(f"subset {src.subset}")
    parts.append(f"split {src.split}")
    return ", ".join(parts)


def _sources(cfg: TrainingConfig, run_dir: Path | None) -> tuple[list[str], list[str]]:
    """(human-readable sources, Hub dataset ids) from streaming_config.json or data.train_shards."""
    stream_file = run_dir / STREAMING_CONFIG if run_dir is not None else None
    if stream_file is not None and stream_file.is_file():
        try:
            stream = StreamingConfig.model_validate_json(stream_file.read_text(encoding="utf-8"))
            sources = stream.source_list()  # version 1's one source, or a mixture's
            weights = stream.weights()
        except ValueError:  # damaged: the card falls back to data.train_shards
            stream = None
        if stream is not None:
            lines = [_describe_source(src) for src in sources]
            if len(sources) > 1:
                lines = [
                    f"{src.name}: {line} (weight {weight:.3g})"
                    for src, line, weight in zip(sources, lines, weights, strict=True)
                ]
            hub = [src.dataset for src in sources if _is_hub_id(src.dataset) and not src.data_files]
            return lines, list(dict.fromkeys(hub))
    shards = list(cfg.data.train_shards)
    return [Path(s).name if "://" not in s else s for s in shards], []


def _trainer_counters(folder: Path) -> dict:
    file = folder / ckpt.TRAINER_STATE_FILE
    if not file.is_file():
        return {}
    try:
        # mmap: only the small counters are read, not the optimizer moments beside them.
        state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # unreadable: the card leaves tokens seen out rather than fail the export
        return {}
    return dict(state.get("state") or {}) if isinstance(state, dict) else {}


def _last_val_loss(cfg: TrainingConfig, step: int, manifest: dict) -> float | None:
    """The last val_loss metrics.jsonl logged at or before the checkpoint's step."""
    path = cfg.runtime.logging.metrics_jsonl
    found = None
    if path is not None and Path(path).is_file():
        for line in Path(path).read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if not isinstance(record, dict):
                continue
            value, at = record.get("val_loss"), record.get("step")
            # a damaged line (no step, a string) is skipped, as an unparsable one is
            if isinstance(value, int | float) and isinstance(at, int) and at <= step:
                found = float(value)
    if found is None and isinstance(manifest.get("val_loss"), int | float):
        found = float(manifest["val_loss"])
    return found


def read_benchmarks(folder: Path) -> dict[str, dict[str, float]]:
    """``{task: {metric: value}}`` from eval_results.json (written by `lmstream eval --tasks`)."""
    path = folder / EVAL_RESULTS_FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    tasks = data.get("tasks") if isinstance(data, dict) else None
    if not isinstance(tasks, dict):  # malformed: the card leaves benchmarks out
        return {}
    return {
        str(task): {
            str(k): float(v)
            for k, v in metrics.items()
            if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
        }
        for task, metrics in tasks.items()
        if isinstance(metrics, dict)
    }


def gather_facts(
    model, cfg: TrainingConfig, folder: Path, architecture: str, name: str, run_dir: Path | None
) -> CardFacts:
    manifest = ckpt.read_manifest(folder) if (folder / ckpt.MANIFEST_FILE).is_file() else {}
    step = int(manifest.get("step", 0))
    sources, hub = _sources(cfg, run_dir)
    return CardFacts(
        name=name,
        architecture=architecture,
        parameters=model.num_parameters(),
        vocab_size=model.embed.weight.shape[0],
        step=step,
        tokens_seen=_trainer_counters(folder).get("tokens_seen"),
        val_loss=_last_val_loss(cfg, step, manifest),
        sources=sources,
        hub_datasets=hub,
        benchmarks=read_benchmarks(folder),
        config=cfg,
    )


def _metadata(facts: CardFacts):
    from huggingface_hub import EvalResult, ModelCardData

    results = [
        EvalResult(
            task_type="text-generation",
            dataset_type=task,
            dataset_name=task,
            metric_type=metric,
            metric_value=value,
        )
        for task, metrics in sorted(facts.benchmarks.items())
        for metric, value in sorted(metrics.items())
        if not metric.endswith("_stderr")
    ]
    return ModelCardData(
        library_name="transformers",
        pipeline_tag="text-generation",
        license=facts.license,
        datasets=facts.hub_datasets or None,
        tags=["lmstream", "causal-lm", "pretraining"],
        model_name=facts.name if results else None,
        eval_results=results or None,
    )


def _fmt_count(n: int) -> str:
    for unit, size in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return "under 1K"


def render(facts: CardFacts) -> str:
    """The README.md text: YAML metadata between ``---`` lines, then the card."""
    m = facts.config.model if facts.config is not None else None
    lines = [
        f"# {facts.name}",
        "",
        "A decoder-only language model pre-trained from scratch with lmstream, exported to "
        f"transformers (`{facts.architecture}`; loads with `AutoModelForCausalLM`, no custom "
        "code).",
        "",
        "| | |",
        "| --- | --- |",
        f"| parameters | {facts.parameters:,} ({_fmt_count(facts.parameters)}) |",
    ]
    if m is not None:
        lines.append(
            f"| shape | {m.num_layers} layers, hidden {m.hidden_size}, "
            f"{m.num_attention_heads} heads ({m.kv_heads} key/value), {m.activation}, {m.norm} |"
        )
        lines.append(f"| context length | {m.max_position_embeddings} tokens |")
    lines.append(f"| tokenizer | byte-level BPE, vocabulary {facts.vocab_size:,} |")
    lines.append(f"| optimizer steps | {facts.step:,} |")
    if facts.tokens_seen is not None:
        lines.append(f"| tokens seen | {facts.tokens_seen:,} ({_fmt_count(facts.tokens_seen)}) |")
    if facts.val_loss is not None and math.isfinite(facts.val_loss):
        ppl = math.exp(min(facts.val_loss, 50.0))
        lines.append(f"| validation loss | {facts.val_loss:.4f} (perplexity {ppl:.2f}) |")
    lines += ["", "## Training data", ""]
    lines += [f"- {s}" for s in facts.sources] or ["- (not recorded)"]
    if facts.benchmarks:
        lines += ["", "## Benchmarks (lm-evaluation-harness)", "", "| task | metric | value |"]
        lines.append("| --- | --- | --- |")
        for task, metrics in sorted(facts.benchmarks.items()):
            for metric, value in sorted(metrics.items()):
                if not metric.endswith("_stderr"):
                    err = metrics.get(f"{metric}_stderr")
                    shown = f"{value:.4f}" + (f" ± {err:.4f}" if err is not None else "")
                    lines.append(f"| {task} | {metric} | {shown} |")
    lines += [
        "",
        "## Use",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        f'model = AutoModelForCausalLM.from_pretrained("{facts.name}")',
        f'tokenizer = AutoTokenizer.from_pretrained("{facts.name}")',
        "```",
    ]
    return f"---\n{_metadata(facts).to_yaml()}\n---\n\n" + "\n".join(lines) + "\n"


def write_model_card(
    model, cfg: TrainingConfig, folder: Path, out: Path, architecture: str, *,
    name: str | None = None, license: str | None = None,
) -> Path:  # fmt: skip
    """Write ``out/README.md`` for the export of checkpoint ``folder``; returns its path."""
    from lmstream.checkpoint_eval import find_run_dir
    from lmstream.errors import CheckpointError

    try:
        run_dir = find_run_dir(folder, cfg)
    except CheckpointError:
        run_dir = None  # a checkpoint moved out of its run: the card says less
    facts = gather_facts(model, cfg, folder, architecture, name or out.name, run_dir)
    facts.license = license
    path = out / "README.md"
    path.write_text(render(facts), encoding="utf-8")
    return path
