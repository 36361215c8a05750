"""Builders for the mixture tests: sources of unequal document lengths, each document starting
with its source's letter and a number (``a0012``), a tokenizer trained on all of them, and a
files-mode training config that mixes them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from tests.support.training import DELETE, tiny_training_config

from lmstream.tokenizer import save_tokenizer, train_bpe

WORDS = ["alpha", "beta", "gamma", "delta", "river", "stone", "light", "shadow", "north", "south"]
# Words per document for sources a, b, c: short, long, medium (unequal lengths on purpose).
LENGTHS = {"a": (2, 12), "b": (40, 160), "c": (10, 40)}


def source_texts(letter: str, n: int, seed: int = 0) -> list[str]:
    lo, hi = LENGTHS[letter]
    rng = np.random.default_rng([seed, ord(letter)])
    return [
        f"{letter}{i:04d} " + " ".join(rng.choice(WORDS, size=int(rng.integers(lo, hi))))
        for i in range(n)
    ]


def write_sources(root: Path, sizes: dict[str, int], files: int = 1) -> dict[str, list[str]]:
    """root/LETTER/part-K.jsonl for each source (documents dealt to ``files`` files), and a
    byte-level BPE of 300 tokens in root/tok/ trained on all sources. Returns each source's
    file paths."""
    out, everything = {}, []
    for letter, n in sizes.items():
        texts = source_texts(letter, n)
        everything += texts
        folder = root / letter
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for k in range(files):
            p = folder / f"part-{k}.jsonl"
            p.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts[k::files]))
            paths.append(str(p))
        out[letter] = paths
    save_tokenizer(train_bpe(everything, 300, ["<|endoftext|>", "<|pad|>"]), root / "tok")
    return out


def mixture_config(root: Path, paths: dict[str, list[str]], weights: dict[str, float],
                   total_steps: int = 4, **overrides) -> dict:  # fmt: skip
    """A tiny files-mode config mixing ``paths`` (source name = its letter) with ``weights``."""
    mixture = [
        {"name": letter, "weight": weights[letter], "train_shards": paths[letter]}
        for letter in weights
    ]
    cfg = tiny_training_config(root, total_steps, **{"data.train_shards": DELETE})
    cfg["tokenizer"]["tokenizer_json"] = str(root / "tok" / "tokenizer.json")
    cfg["data"]["mixture"] = mixture
    for dotted, value in overrides.items():
        node = cfg
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return cfg
