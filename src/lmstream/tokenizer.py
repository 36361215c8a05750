"""Byte-level BPE: train from a text iterator (nothing written to disk), save, load.

Byte-level (GPT-2 style) so that any UTF-8 text round-trips byte for byte: the pre-tokenizer maps
every byte to a printable symbol, so there is no unknown token and no normalization. The files
are the ones the seed lists (tokenizer.json, vocab.json, merges.txt); tokenizer.json alone is
what lmstream and transformers' ``PreTrainedTokenizerFast`` load.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from lmstream.config import SPECIAL_TOKENS_DEFAULT
from lmstream.errors import CheckpointError, ConfigError

MIN_VOCAB_SIZE = 256  # one token per byte, before any merge


def new_bpe() -> Tokenizer:
    """An untrained byte-level BPE tokenizer (no prefix space, so decode(encode(x)) == x)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    return tok


def bpe_trainer(
    vocab_size: int, special_tokens: list[str], show_progress: bool = False
) -> trainers.BpeTrainer:
    return trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=show_progress,
    )


@contextmanager
def special_tokens_as_text(tok: Tokenizer) -> Iterator[Tokenizer]:
    """Within the block, ``tok`` encodes the *text* of its special tokens like any other text.

    Documents are data: a web page quoting ``<|endoftext|>`` or ``<|pad|>`` must not inject a
    document boundary or padding (only the packer inserts ``<|endoftext|>``). By default the
    tokenizers library matches added tokens in the input before the model sees it, and
    ``add_special_tokens=False`` only turns off the post-processor's additions, not that.
    ``encode_special_tokens`` (in every tokenizers lmstream supports) turns the matching off; it is not saved in
    tokenizer.json, so the file is unchanged, and it is restored here so that prompts (generate)
    still may name special tokens.
    """
    previous = tok.encode_special_tokens
    tok.encode_special_tokens = True
    try:
        yield tok
    finally:
        tok.encode_special_tokens = previous


def count_special_text(texts: Iterable[str], special_tokens: Iterable[str]) -> int:
    """How many of ``texts`` contain the text of one of ``special_tokens``."""
    tokens = tuple(special_tokens)
    return sum(any(t in text for t in tokens) for text in texts)


def check_special_tokens(special_tokens: list[str]) -> list[str]:
    """EOT and PAD first (in that order), then any extra tokens, without duplicates."""
    out: list[str] = []
    for token in [*SPECIAL_TOKENS_DEFAULT, *special_tokens]:
        if not isinstance(token, str) or not token:
            raise ConfigError(f"special token {token!r} must be a non-empty string")
        if token not in out:
            out.append(token)
    return out


def train_bpe(
    texts: Iterable[str] | Iterable[list[str]],
    vocab_size: int,
    special_tokens: list[str],
    *,
    length: int | None = None,
) -> Tokenizer:
    """Train a byte-level BPE on ``texts`` (strings, or lists of strings: batches are faster).

    The trainer consumes the iterator once and keeps only word counts, so memory does not grow
    with the number of documents beyond the distinct pre-tokenized words.
    """
    specials = check_special_tokens(special_tokens)
    if vocab_size < MIN_VOCAB_SIZE + len(specials):
        raise ConfigError(
            f"--vocab-size: {vocab_size} is too small; byte-level BPE needs at least "
            f"{MIN_VOCAB_SIZE + len(specials)} (256 bytes + {len(specials)} special tokens)"
        )
    tok = new_bpe()
    # Merges are learnt from the text as it will be encoded: special-token text as plain text.
    with special_tokens_as_text(tok):
        tok.train_from_iterator(texts, trainer=bpe_trainer(vocab_size, specials), length=length)
    return tok


def save_tokenizer(tok: Tokenizer, directory: str | Path) -> None:
    """Write tokenizer.json, vocab.json and merges.txt into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tok.save(str(directory / "tokenizer.json"))
    # model.save writes "<prefix>-vocab.json"/"-merges.txt" (or plain names with no prefix).
    tok.model.save(str(directory))


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Load tokenizer.json; CheckpointError when it is missing or not a tokenizer file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"{path}: tokenizer file not found; run `lmstream orchestrate` to create it"
        )
    try:
        return Tokenizer.from_file(str(path))
    except Exception as err:  # tokenizers raises a bare Exception for corrupt JSON
        raise CheckpointError(f"{path}: not a valid tokenizer.json ({err})") from None


def dump_special_tokens(tokens: list[str], path: str | Path) -> None:
    """special_tokens.txt in the seed's format: a JSON list on one line."""
    Path(path).write_text(json.dumps(tokens) + "\n", encoding="utf-8")
