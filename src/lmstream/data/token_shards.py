"""Pre-tokenized training data: flat token arrays read by memory map (files mode).

For users who prepare once and train many times: ``write_token_shards`` tokenizes texts once into

    OUT_DIR/token_shards.json     manifest: dtype, vocab size, eot id, tokenizer hash, shards
    OUT_DIR/tokens-00000.bin      flat little-endian uint16 (vocab <= 65536) or uint32 token ids,
                                  each document followed by <|endoftext|> (nanoGPT's layout)
    OUT_DIR/tokens-00000.idx.npy  int64 end offset of each document in the .bin

and ``TokenShardSource`` serves them as documents (arrays, eot stripped; the packer re-adds it)
with O(1) seeks, so resume never re-reads anything. List OUT_DIR (or its token_shards.json) in
``data.train_shards``.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from lmstream.errors import ConfigError, DataSourceError

MANIFEST = "token_shards.json"
FORMAT = "lmstream-token-shards"
DEFAULT_SHARD_TOKENS = 100_000_000


def is_token_shards(path: str | Path) -> bool:
    p = Path(path)
    return p.name == MANIFEST or (p.is_dir() and (p / MANIFEST).is_file())


def tokenizer_fingerprint(tokenizer: Any) -> str:
    return hashlib.sha256(tokenizer.to_str().encode("utf-8")).hexdigest()


def write_token_shards(
    texts: Iterable[str],
    tokenizer: Any,
    out_dir: str | Path,
    *,
    shard_tokens: int = DEFAULT_SHARD_TOKENS,
    batch_size: int = 1000,
) -> Path:
    """Tokenize ``texts`` into token shards under ``out_dir``; returns the manifest's path."""
    from lmstream.data.packing import encode_documents, eot_id

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vocab = tokenizer.get_vocab_size(with_added_tokens=True)
    dtype = np.uint16 if vocab <= 2**16 else np.uint32
    eot = eot_id(tokenizer)
    writer = _ShardWriter(out, dtype, shard_tokens)
    batch: list[str] = []
    for text in texts:
        if text and text.strip():
            batch.append(text)
        if len(batch) >= batch_size:
            writer.add(encode_documents(tokenizer, batch), eot)
            batch = []
    writer.add(encode_documents(tokenizer, batch), eot)
    shards = writer.close()
    if not shards:
        raise DataSourceError(f"{out}: no non-empty documents to write as token shards")
    manifest = {
        "format": FORMAT,
        "version": 1,
        "dtype": np.dtype(dtype).name,
        "vocab_size": vocab,
        "eot_id": eot,
        "tokenizer_sha256": tokenizer_fingerprint(tokenizer),
        "shards": shards,
    }
    path = out / MANIFEST
    path.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return path


class _ShardWriter:
    def __init__(self, out: Path, dtype: Any, shard_tokens: int):
        self.out, self.dtype, self.limit = out, dtype, shard_tokens
        self.shards: list[dict] = []
        self._file = None
        self._ends: list[int] = []
        self._tokens = 0

    def add(self, docs: list[np.ndarray], eot: int) -> None:
        for doc in docs:
            if not len(doc):
                continue
            if self._file is None:
                name = f"tokens-{len(self.shards):05d}"
                self._name, self._file = name, open(self.out / f"{name}.bin", "wb")  # noqa: SIM115
            arr = np.empty(len(doc) + 1, dtype=self.dtype)
            arr[:-1], arr[-1] = doc, eot
            arr.astype(arr.dtype.newbyteorder("<"), copy=False).tofile(self._file)
            self._tokens += len(arr)
            self._ends.append(self._tokens)
            if self._tokens >= self.limit:
                self._finish()

    def _finish(self) -> None:
        self._file.close()
        np.save(self.out / f"{self._name}.idx.npy", np.asarray(self._ends, dtype=np.int64))
        self.shards.append(
            {
                "file": f"{self._name}.bin",
                "index": f"{self._name}.idx.npy",
                "tokens": self._tokens,
                "documents": len(self._ends),
            }
        )
        self._file, self._ends, self._tokens = None, [], 0

    def close(self) -> list[dict]:
        if self._file is not None:
            self._finish()
        return self.shards


class TokenShards:
    """Every document of one or more token-shard folders, in order, by global index."""

    def __init__(self, paths: Iterable[str | Path]):
        self.arrays: list[np.ndarray] = []
        self.ends: list[np.ndarray] = []
        self.vocab_size = 0
        self.eot_id: int | None = None
        for p in paths:
            self._load(Path(p))
        self._starts = np.cumsum([0] + [len(e) for e in self.ends])

    def _load(self, path: Path) -> None:
        manifest_path = path if path.name == MANIFEST else path / MANIFEST
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
            if manifest.get("format") != FORMAT:
                raise ValueError(f"format is {manifest.get('format')!r}, not {FORMAT!r}")
            for shard in manifest["shards"]:
                arr = np.memmap(
                    manifest_path.parent / shard["file"], dtype=np.dtype(manifest["dtype"]).newbyteorder("<"), mode="r"
                )  # fmt: skip
                ends = np.load(manifest_path.parent / shard["index"])
                if len(arr) != shard["tokens"] or len(ends) != shard["documents"]:
                    raise ValueError(f"{shard['file']} does not match its manifest entry")
                self.arrays.append(arr)
                self.ends.append(ends)
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise DataSourceError(f"{manifest_path}: not readable token shards ({err})") from None
        if self.eot_id is not None and manifest["eot_id"] != self.eot_id:
            raise ConfigError(f"{manifest_path}: written with a different tokenizer (eot id)")
        self.eot_id = manifest["eot_id"]
        self.vocab_size = max(self.vocab_size, manifest["vocab_size"])
        self.tokenizer_sha256 = manifest.get("tokenizer_sha256")

    def __len__(self) -> int:
        return int(self._starts[-1])

    def check_tokenizer(self, tokenizer: Any) -> None:
        """ConfigError when the shards were written with another tokenizer than the experiment's."""
        if self.tokenizer_sha256 not in (None, tokenizer_fingerprint(tokenizer)):
            raise ConfigError(
                "data.train_shards: the token shards were written with a different tokenizer "
                "than tokenizer.tokenizer_json; write them again with this tokenizer"
            )

    def document(self, i: int) -> np.ndarray:
        """Document ``i`` without its trailing eot."""
        shard = int(np.searchsorted(self._starts, i, side="right")) - 1
        j = i - int(self._starts[shard])
        ends = self.ends[shard]
        start = int(ends[j - 1]) if j else 0
        return np.asarray(self.arrays[shard][start : int(ends[j]) - 1], dtype=np.int64)


class TokenShardSource:
    """One worker's part of token shards (a ``shuffle.DocumentSource``): every ``workers``-th
    document after the first ``skip_first`` (the validation holdout)."""

    def __init__(
        self, shards: TokenShards, *, worker: int = 0, workers: int = 1, skip_first: int = 0
    ):
        self.shards, self.worker, self.workers = shards, worker, workers
        self.skip_first = skip_first
        self.skipped: Counter = Counter()
        self._next = 0

    def open(self, epoch: int, state: dict | None) -> None:
        self._next = int(state["next"]) if state else 0

    def state(self) -> dict:
        return {"next": self._next}

    def read(self, n: int) -> list[np.ndarray]:
        out = []
        total = len(self.shards)
        while len(out) < n:
            i = self.skip_first + self._next * self.workers + self.worker
            if i >= total:
                break
            out.append(self.shards.document(i))
            self._next += 1
        return out
