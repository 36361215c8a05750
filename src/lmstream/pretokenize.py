"""Pre-tokenized training data: `lmstream orchestrate --pretokenize` (files mode).

For users who prepare once and train many times: the source is streamed once more after the
tokenizer is trained and written as flat uint16/uint32 token shards (data/token_shards.py), which
training reads by memory map with no tokenizing at all. training.yaml's data.train_shards (and
validation_shards) then point at the shard folders.
"""

from __future__ import annotations

from itertools import islice
from pathlib import Path
from typing import Any

from lmstream.data.sources import DocumentStream, SourceSpec, open_dataset
from lmstream.data.token_shards import write_token_shards


def pretokenize_split(
    spec: SourceSpec,
    split: str,
    tokenizer: Any,
    out_dir: Path,
    *,
    max_samples: int | None,
    max_chars: int,
    batch_size: int,
) -> tuple[Path, int]:
    """Stream ``split`` (the first ``max_samples`` documents) into token shards in ``out_dir``;
    returns (the shard folder, documents written). Bad records are skipped as in training."""
    docs = DocumentStream(
        open_dataset(spec, split), spec.text_field, max_chars=max_chars, batch_size=batch_size
    )
    texts = islice(iter(docs), max_samples) if max_samples is not None else iter(docs)
    write_token_shards(texts, tokenizer, out_dir, batch_size=batch_size)
    return Path(out_dir), docs.documents
