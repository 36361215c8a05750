"""Shared builders for the end-to-end, distributed and reliability tests: a tiny KJV corpus with
its tokenizer (and a module-scoped fixture of it), dotted-key overrides of a config dict, a run
folder holding training.yaml, what a run logged and checkpointed, and what one pass of a run's
training loader holds."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch
import yaml

from lmstream.cli import main as cli_main
from lmstream.config import load_training_config
from lmstream.corpus import kjv_documents
from lmstream.data.loader import build_train_loader
from lmstream.tokenizer import load_tokenizer, save_tokenizer, train_bpe
from lmstream.train.checkpoint import checkpoint_name
from lmstream.workspace import CHECKPOINTS, METRICS


def write_kjv_corpus(root: Path, n_docs: int, vocab_size: int) -> Path:
    """``n_docs`` KJV paragraphs as root/train.jsonl and a byte-level BPE of ``vocab_size``
    trained on them in root/tok/."""
    docs = list(itertools.islice(kjv_documents(), n_docs))
    with open(root / "train.jsonl", "w") as f:
        for doc in docs:
            f.write(json.dumps({"text": doc}) + "\n")
    save_tokenizer(train_bpe(docs, vocab_size, ["<|endoftext|>", "<|pad|>"]), root / "tok")
    return root


def kjv_corpus_fixture(n_docs: int, vocab_size: int):
    """A module-scoped fixture ``corpus``: ``write_kjv_corpus`` in a folder of its own, made once
    per test module (``corpus = kjv_corpus_fixture(200, 300)`` at a module's top level)."""

    @pytest.fixture(scope="module", name="corpus")
    def corpus(tmp_path_factory) -> Path:
        return write_kjv_corpus(tmp_path_factory.mktemp("corpus"), n_docs, vocab_size)

    return corpus


DELETE = object()  # an override value that removes the key (a missing field)


def apply_overrides(cfg: dict, overrides: dict) -> dict:
    """Set dotted keys in a nested config dict, e.g. ``{"runtime.parallelism": "fsdp"}``
    (missing sections are created; the value DELETE removes the key)."""
    for dotted, value in overrides.items():
        *parents, leaf = dotted.split(".")
        node = cfg
        for key in parents:
            node = node.setdefault(key, {})
        if value is DELETE:
            del node[leaf]
        else:
            node[leaf] = value
    return cfg


def train_in_process(config: Path, *extra: str) -> int:
    """The real CLI in this process, with one torch thread like the subprocesses."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return cli_main(["train", "--config", str(config), *extra])
    finally:
        torch.set_num_threads(threads)


def write_run(run_dir: Path, cfg: dict) -> Path:
    """run_dir/training.yaml holding ``cfg``; returns its path."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "training.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def logged(run_dir: Path, key: str) -> dict[int, float]:
    """{step: value} of ``key`` in the run's metrics.jsonl (the steps that logged it)."""
    lines = (run_dir / METRICS).read_text().splitlines()
    return {r["step"]: r[key] for r in map(json.loads, lines) if key in r}


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    """The run's checkpoint folder of ``step``."""
    return run_dir / CHECKPOINTS / checkpoint_name(step)


def tiny_training_config(corpus: Path, total_steps: int, **overrides) -> dict:
    """A config dict for a seconds-long CPU run on ``write_kjv_corpus``'s corpus: a 2-layer
    64-wide model, batches of 4 x 32 tokens, evaluation and checkpoint at the end;
    ``overrides`` are dotted keys (see apply_overrides)."""
    cfg = {
        "model": {
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_layers": 2,
            "num_attention_heads": 4,
            "max_position_embeddings": 64,
        },
        "tokenizer": {"tokenizer_json": str(corpus / "tok" / "tokenizer.json")},
        "data": {
            "train_shards": [str(corpus / "train.jsonl")],
            "batch_size": 4,
            "sequence_length": 32,
            "validation_documents": 10,
            "shuffle_buffer_size": 32,
            "num_workers": 0,
        },
        "optimizer": {"learning_rate": 3.0e-3},
        "scheduler": {"warmup_steps": 1, "total_steps": total_steps},
        "runtime": {
            "seed": 7,
            "device": "cpu",
            "log_every_n_steps": 1,
            "checkpoint": {"async_save": False},
            "evaluation": {"max_batches": 2},
        },
    }
    return apply_overrides(cfg, overrides)


def short_document_files(corpus: Path, parts: int) -> dict[str, bytes]:
    """The corpus's sentences as documents, spread over ``parts`` JSON-lines files (for a
    FileServer): served with a small stream_batch_size, a run keeps opening new files as it
    trains, so a source turned off from the test is met within a few dozen steps."""
    paragraphs = [json.loads(line)["text"] for line in (corpus / "train.jsonl").open()]
    sentences = [s.strip() + "." for p in paragraphs for s in p.split(".") if len(s.strip()) > 20]
    lines = [json.dumps({"text": s}).encode() + b"\n" for s in sentences]
    return {f"part-{k:03d}.jsonl": b"".join(lines[k::parts]) for k in range(parts)}


def pass_tokens(config: Path, rank: int = 0, world_size: int = 1) -> tuple[int, int]:
    """(micro-batches, real target tokens) in one pass of ``rank``'s training loader for the
    run whose training.yaml is ``config`` (padding of a worker's final batch not counted)."""
    cfg = load_training_config(config)
    tokenizer = load_tokenizer(cfg.tokenizer.tokenizer_json)
    loader = build_train_loader(cfg, tokenizer, config.parent, rank=rank, world_size=world_size)
    micro = tokens = 0
    try:
        for batch in loader:
            if batch.epoch > 0:
                break
            micro += 1
            tokens += int((batch.targets != -100).sum())
    finally:
        loader.close()  # its worker processes end now, not when collected
    return micro, tokens
