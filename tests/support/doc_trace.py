"""Document-id traces through the training loader (issue #20's method).

Each test document starts with its id (``doc-00017 ...``); decoding the loader's token rows
back, split at ``<|endoftext|>``, tells which documents were trained, how often and in which
epoch. ``drive`` runs the rank loaders the way the training loop does (every rank takes one
batch per micro-step; when every rank's batches are idle the pass is over on all of them), so
a trace covers whole epochs exactly as training sees them.
"""

from __future__ import annotations

import gzip
import json
import re
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

_WORDS = ["alpha", "beta", "gamma", "delta", "river", "stone", "light", "north", "south", "sea"]
_ID = re.compile(r"^doc-(\d{5}) ")


def docs(n: int, start: int = 0, seed: int = 0) -> list[str]:
    """Documents ``doc-START ...`` to ``doc-(START+n-1) ...``, 2 to 40 words each."""
    rng = np.random.default_rng(seed + start)
    return [
        f"doc-{i:05d} " + " ".join(rng.choice(_WORDS, size=int(rng.integers(2, 40))))
        for i in range(start, start + n)
    ]


def write_jsonl(path: Path, texts: list[str], gz: bool = False) -> str:
    lines = "".join(json.dumps({"text": t}) + "\n" for t in texts).encode()
    path.write_bytes(gzip.compress(lines) if gz else lines)
    return str(path)


def write_parquet(path: Path, texts: list[str], row_group_size: int = 16) -> str:
    pq.write_table(pa.table({"text": texts}), path, row_group_size=row_group_size)
    return str(path)


def write_uneven(folder: Path, sizes: list[int], kind: str) -> tuple[list[str], list[str]]:
    """Files of ``sizes`` documents (ids numbered across them) as jsonl, jsonl.gz or parquet
    with row groups; returns (paths, all documents in source order)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths, texts = [], []
    for k, n in enumerate(sizes):
        part = docs(n, start=len(texts))
        texts += part
        if kind == "parquet":
            paths.append(write_parquet(folder / f"part-{k}.parquet", part))
        else:
            gz = kind == "jsonl.gz"
            paths.append(write_jsonl(folder / f"part-{k}.jsonl{'.gz' if gz else ''}", part, gz))
    return paths, texts


def doc_id(text: str) -> int:
    match = _ID.match(text)
    assert match, f"not a whole document: {text[:40]!r}"
    return int(match.group(1))


def real_tokens(batch) -> np.ndarray:
    """A batch's tokens row-major, without the padding of a worker's final batch (whose targets
    are -100); a lone last token of a row has no target and is always an <|endoftext|>."""
    rows = np.concatenate([batch.inputs.numpy(), batch.targets[:, -1:].numpy()], axis=1)
    valid = batch.targets.numpy() != -100
    keep = np.concatenate([valid[:, :1], valid], axis=1)
    return rows[keep]


def ids_of(tokens: np.ndarray, tokenizer) -> list[int]:
    """Ids of the documents in one worker's token stream of one pass (it ends at a document's
    end: a pass packs whole documents)."""
    eot = tokenizer.token_to_id("<|endoftext|>")
    if len(tokens) and tokens[-1] != eot:  # the pass's last <|endoftext|> fell alone in a row
        tokens = np.append(tokens, eot)
    cuts = np.flatnonzero(tokens == eot)
    pieces = np.split(tokens[: cuts[-1]], cuts[:-1] + 1)
    return [doc_id(tokenizer.decode([int(t) for t in p if t != eot])) for p in pieces]


def drive(
    loaders: list,
    epochs: int,
    *,
    accum: int = 1,
    start_epoch: int = 0,
    max_steps: int | None = None,
) -> tuple[list[tuple], int]:
    """Run rank loaders (built with ``sync_passes=True``) in lockstep as the training loop does,
    until ``epochs`` passes are done (or ``max_steps``); returns (records, epoch reached), a
    record (epoch, rank, worker, real tokens, weight) per batch (worker -1: idle)."""
    records: list[tuple] = []
    its = [iter(loader) for loader in loaders]
    epoch, steps = start_epoch, 0
    while epoch < epochs and (max_steps is None or steps < max_steps):
        busy = False
        for rank, (loader, it) in enumerate(zip(loaders, its, strict=True)):
            for _ in range(accum):
                batch = next(it)
                assert batch.epoch == epoch, "a rank ran ahead into the next epoch"
                busy |= batch.weight > 0
                tokens = real_tokens(batch) if batch.weight > 0 else np.empty(0, np.int64)
                records.append((epoch, rank, loader.last_worker, tokens, batch.weight))
        steps += 1
        assert steps < 20_000, "the pass never ended"
        if not busy:
            for loader in loaders:
                loader.end_pass()
            epoch += 1
    return records, epoch


def roundtrip(state: dict) -> dict:
    """A loader state through torch.save / torch.load(weights_only=True), as checkpoints keep it."""
    import io

    import torch

    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def trained_ids(records: list[tuple], tokenizer) -> dict[int, Counter]:
    """{epoch: Counter of the document ids trained in it} from ``drive``'s records."""
    streams: dict[tuple, list[np.ndarray]] = defaultdict(list)
    for epoch, rank, worker, tokens, weight in records:
        if weight > 0:
            streams[(epoch, rank, worker)].append(tokens)
    out: dict[int, Counter] = defaultdict(Counter)
    for (epoch, _rank, _worker), parts in streams.items():
        out[epoch].update(ids_of(np.concatenate(parts), tokenizer))
    return dict(out)


def record_tokenizer_input(monkeypatch) -> list[str]:
    """The documents orchestrate feeds its (real) BPE trainer, recorded in the returned list."""
    import lmstream.orchestrate as orch
    from lmstream.tokenizer import train_bpe

    seen: list[str] = []

    def recording_train_bpe(batches, *args, **kwargs):
        def record():
            for batch in batches:
                seen.extend(batch)
                yield batch

        return train_bpe(record(), *args, **kwargs)

    monkeypatch.setattr(orch, "train_bpe", recording_train_bpe)
    return seen
