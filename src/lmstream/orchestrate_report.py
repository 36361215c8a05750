"""What `lmstream orchestrate` prints at its end: what was read and skipped, what each source of
a mixture gave the tokenizer, what did not go as asked, and what was written where."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lmstream.orchestrate import OrchestrateResult
    from lmstream.tokenizer_sample import MixtureSample


def reasons(skipped: dict[str, int]) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in sorted(skipped.items()))


def mixture_lines(sample: MixtureSample, sources: list) -> list[str]:
    """What each source gave the tokenizer (its first pass), and which sources were read again."""
    lines = ["tokenizer sample (characters, share vs weight):"]
    total_weight = sum(s.weight for s in sources)
    for source, stream, chars, share in zip(
        sources, sample.streams, sample.chars, sample.shares(), strict=True
    ):
        lines.append(
            f"  {source.name}: {stream.documents:,} documents, {chars:,} characters, "
            f"{share:.1%} vs {source.weight / total_weight:.1%}"
        )
    for index, again in enumerate(sample.again):
        if again:  # ended its pass before the others: read again to keep its share
            lines.append(
                f"  (source {sources[index].name!r} ended its pass of "
                f"{sample.streams[index].documents:,} documents before the others and was read "
                f"again from its start {again:,} time(s) to keep its share, as training "
                "repeats it)"
            )
    return lines


def summary(result: OrchestrateResult, seconds: float | None = None) -> str:
    """The end-of-run report: what was read, what was skipped, what was written where."""
    secs = seconds if seconds is not None else result.seconds
    mb = result.bytes / 1e6
    skipped = sum(result.skipped.values())
    lines = [
        f"samples: {result.documents:,} documents, {mb:,.1f} MB in {secs:,.1f} s "
        f"({result.documents / max(secs, 1e-9):,.0f} samples/s, {mb / max(secs, 1e-9):,.1f} MB/s)",
        f"skipped: {skipped:,}" + (f" ({reasons(result.skipped)})" if skipped else ""),
        f"retries: {result.retries}",
    ]
    if result.special_text:
        lines.append(
            f"special-token text: {result.special_text:,} documents (kept as plain text; only "
            "the packer inserts <|endoftext|>, between documents)"
        )
    lines += [
        f"vocab size: {result.vocab_size:,}",
        f"tokenizer: {result.paths.tokenizer_dir}",
        f"run folder: {result.paths.run_dir}",
    ]
    lines += [f"  wrote {f}" for f in result.files]
    lines += result.mixture
    lines += notes(result)
    lines.append(f"next: lmstream train --config {result.paths.training_yaml}")
    return "\n".join(lines)


def notes(result: OrchestrateResult) -> list[str]:
    """What did not go as asked: a smaller vocabulary, a source shorter than --max-samples."""
    out = list(result.holdout)
    asked, got = result.vocab_requested, result.vocab_size
    if asked is not None and got < asked:
        out.append(
            f"note: vocabulary {got:,}, not the {asked:,} asked: the corpus "
            f"({result.bytes / 1e6:,.1f} MB) ran out of pairs to merge; training takes the "
            f"tokenizer's size as is; ask for at most {got:,} to get what you ask for"
        )
    limit = result.max_samples
    if limit is not None and result.documents < limit:
        out.append(
            f"note: the source ran out at {result.documents:,} documents, before --max-samples "
            f"{limit:,}; training will read these {result.documents:,} documents once per "
            "epoch (its start-up line says how many epochs the plan implies)"
        )
    return out
