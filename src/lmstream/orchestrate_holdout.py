"""How many documents orchestrate holds out of each source for validation
(training.yaml's ``data.validation_documents``), measured in tokens.

A holdout sized by documents alone (5% of a source, see ``validation.holdout_size``) can hold
too few tokens: 8 code lines of ~11 tokens are 88 tokens, fewer than one validation row of
``sequence_length + 1``, and training stopped at start-up asking to raise
``data.validation_documents``. So once the tokenizer exists, orchestrate reads each source's
first documents again, exactly as validation will (``documents.TextSource``), counts their
tokens (each document plus its ``<|endoftext|>``, as the validation set is built) and raises the
holdout until every source holds the rows evaluation takes (``evaluation.num_sequences``), never
past a quarter of a source's documents (most of them stay for training). When even that leaves a
source short of one row, the holdout stays as it was and one note says what to change.
``data.validation_documents`` is one number for every source, so the neediest source decides.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from lmstream.data.documents import TextSource
from lmstream.data.packing import encode_documents
from lmstream.data.sources import SourceSpec
from lmstream.data.validation import HOLDOUT_MAX

# A source of unknown size (no max_samples, not read to its end) may give this many documents.
_UNBOUNDED_CAP = 10 * HOLDOUT_MAX


@dataclass(frozen=True)
class Holdout:
    documents: int  # data.validation_documents to write
    lines: list[str]  # what the report says about it (empty when the first guess was enough)


def size_holdout(
    base: int,
    sources: list,
    specs: list[SourceSpec],
    sizes: list[int | None],
    tokenizer: Any,
    row: int,
    rows: int,
) -> Holdout:
    """The holdout (at least ``base`` documents) that gives each source ``rows`` validation rows
    of ``row`` tokens, if a quarter of every source allows it (``sizes``: documents per pass,
    None when unknown). Sources with a validation split are not held out and not measured."""
    held = [
        (source, spec, size)
        for source, spec, size in zip(sources, specs, sizes, strict=True)
        if not source.validation_split
    ]
    if base == 0:  # a source of under 4 documents: none may be held out, so none is validated
        tiny = [(s, n) for s, n in zip(sources, sizes, strict=True) if n is not None and n < 4]
        if not tiny:
            return Holdout(base, [])
        source, n = tiny[0]
        fix = (
            "more documents" if source.validation_split else "a validation_split or more documents"
        )
        return Holdout(base, [
            f"note: source {source.name!r} has {n:,} documents, too few to hold any out: "
            "data.validation_documents is 0 (one number for every source), so no source is "
            f"validated (no val_loss, nothing in best/); give it {fix}"
        ])  # fmt: skip
    if not held:
        return Holdout(base, [])
    cap = min(size // 4 if size is not None else _UNBOUNDED_CAP for _, _, size in held)
    counts = {str(s.name): _token_counts(tokenizer, spec, s, base, None) for s, spec, _ in held}
    wanted = base
    for (source, spec, _), name in zip(held, counts, strict=True):
        total = sum(counts[name])
        if total >= row * rows or not counts[name]:
            continue
        # read as many more as the first ones' average says the full set needs, plus a margin
        guess = math.ceil(len(counts[name]) * row * rows / max(total, 1) * 1.2)
        more = max(base, min(guess, cap))
        counts[name] = _token_counts(tokenizer, spec, source, more, counts[name])
        wanted = max(wanted, _documents_for(counts[name], row * rows))
    chosen = max(base, min(wanted, cap))
    short = {n: sum(c[:chosen]) for n, c in counts.items() if sum(c[:chosen]) < row}
    if short:
        name, tokens = next(iter(short.items()))
        return Holdout(base, [
            f"note: source {name!r}: its first {min(chosen, len(counts[name])):,} documents "
            f"(the most that may be held out) have {tokens:,} tokens, fewer than one validation "
            f"row of {row:,} (data.sequence_length + 1): training would stop at start-up; "
            "lower data.sequence_length, give the source a validation_split, or give it more "
            "documents"
        ])  # fmt: skip
    if chosen == base:
        return Holdout(base, [])
    held_rows = {n: min(rows, sum(c[:chosen]) // row) for n, c in counts.items()}
    fewest = min(held_rows, key=held_rows.__getitem__)
    raised = (
        f"validation holdout: {chosen:,} documents per source (data.validation_documents, "
        f"{base:,} by document count alone)"
    )
    if held_rows[fewest] == rows:
        return Holdout(chosen, [f"{raised}, so that each source holds evaluation's {rows:,} "
                                f"rows of {row:,} tokens"])  # fmt: skip
    return Holdout(chosen, [
        f"{raised}; a quarter of a source at most, so source {fewest!r} holds "
        f"{held_rows[fewest]:,} of evaluation's {rows:,} rows of {row:,} tokens"
    ])  # fmt: skip


def _token_counts(
    tokenizer: Any, spec: SourceSpec, source, n: int, known: list[int] | None
) -> list[int]:
    """Tokens (with the end-of-text token) of each of the source's first ``n`` documents of
    its pass, read as validation reads them; ``known``: counts already measured."""
    if known is not None and len(known) >= n:
        return known
    reader = TextSource(spec, source.split, max_samples=source.max_samples)
    reader.open(0, None)
    texts = reader.read(n)
    return [len(ids) + 1 for ids in encode_documents(tokenizer, texts)]


def _documents_for(counts: list[int], tokens: int) -> int:
    """The fewest first documents whose tokens reach ``tokens`` (all of them if none do)."""
    total = 0
    for k, count in enumerate(counts, start=1):
        total += count
        if total >= tokens:
            return k
    return len(counts)
