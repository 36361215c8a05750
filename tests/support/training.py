"""Shared builders for the end-to-end, distributed and reliability tests: a tiny KJV corpus with
its tokenizer, dotted-key overrides of a config dict, and a run folder holding training.yaml."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import yaml

from lmstream.corpus import kjv_documents
from lmstream.tokenizer import save_tokenizer, train_bpe


def write_kjv_corpus(root: Path, n_docs: int, vocab_size: int) -> Path:
    """``n_docs`` KJV paragraphs as root/train.jsonl and a byte-level BPE of ``vocab_size``
    trained on them in root/tok/."""
    docs = list(itertools.islice(kjv_documents(), n_docs))
    with open(root / "train.jsonl", "w") as f:
        for doc in docs:
            f.write(json.dumps({"text": doc}) + "\n")
    save_tokenizer(train_bpe(docs, vocab_size, ["<|endoftext|>", "<|pad|>"]), root / "tok")
    return root


def apply_overrides(cfg: dict, overrides: dict) -> dict:
    """Set dotted keys in a nested config dict, e.g. ``{"runtime.parallelism": "fsdp"}``
    (missing sections are created)."""
    for dotted, value in overrides.items():
        *parents, leaf = dotted.split(".")
        node = cfg
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return cfg


def write_run(run_dir: Path, cfg: dict) -> Path:
    """run_dir/training.yaml holding ``cfg``; returns its path."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "training.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path
