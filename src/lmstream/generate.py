"""Sampling from a trained checkpoint with a KV cache, streamed as text pieces.

The prompt is run once (prefill) to fill the cache; each new token then costs one forward pass
over a single position. :func:`generate_tokens` yields token ids as they are drawn and
:func:`stream_text` turns them into text pieces, holding back bytes that do not yet form a
whole UTF-8 character (byte-level BPE splits characters across tokens).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from tokenizers import Tokenizer

from lmstream.config import EOT_TOKEN
from lmstream.errors import ConfigError
from lmstream.model.transformer import Transformer


def sample_next(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Next token ids (B,) from logits (B, V). temperature 0 = greedy (argmax)."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None and 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1:
        # Nucleus sampling (Holtzman et al. 2019): keep the smallest set whose mass reaches top_p,
        # and always the likeliest token (transformers' min_tokens_to_keep=1): top_p=0 is greedy.
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        drop = probs.cumsum(dim=-1) - probs >= top_p  # mass before this token already enough
        drop[:, 0] = False
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def context_room(model: Transformer, prompt_ids: Sequence[int]) -> int:
    """How many new tokens fit after ``prompt_ids`` in the model's context; ConfigError when
    the prompt is empty or leaves no room."""
    limit = model.config.max_position_embeddings
    if not prompt_ids:
        raise ConfigError("the prompt encodes to no tokens; give a non-empty --prompt")
    if len(prompt_ids) >= limit:
        raise ConfigError(
            f"the prompt has {len(prompt_ids)} tokens; this model reads at most "
            f"{limit - 1} plus one new token (max_position_embeddings {limit}); shorten it, "
            "or pass --truncate-prompt to keep its tail"
        )
    return limit - len(prompt_ids)


def prompt_tail(prompt_ids: Sequence[int], limit: int, max_new_tokens: int) -> list[int]:
    """The last tokens of ``prompt_ids`` that leave room for ``max_new_tokens`` in ``limit``
    positions (at least the last one)."""
    keep = max(1, limit - max_new_tokens)
    return list(prompt_ids[-keep:])


@torch.inference_mode()
def generate_tokens(
    model: Transformer,
    prompt_ids: Sequence[int],
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    stop_ids: Sequence[int] = (),
    min_new_tokens: int = 0,
    use_cache: bool = True,
) -> Iterator[int]:
    """Yield up to ``max_new_tokens`` sampled ids after ``prompt_ids`` (stops at a stop id, but
    not within the first ``min_new_tokens``).

    ``use_cache=False`` recomputes the whole sequence each step (the reference the cache is
    tested against). The total length is capped at the model's max_position_embeddings: fewer
    than ``max_new_tokens`` come when the context fills (:func:`context_room` says how many).
    """
    device = model.embed.weight.device
    max_new_tokens = min(max_new_tokens, context_room(model, prompt_ids))
    generator = None
    if seed is not None:
        generator = torch.Generator(device=device).manual_seed(seed)
    ids = torch.tensor([list(prompt_ids)], dtype=torch.long, device=device)  # (1, T)
    cache = model.new_kv_cache(1, len(prompt_ids) + max_new_tokens) if use_cache else None
    step_input = ids
    stop = torch.tensor(list(stop_ids), dtype=torch.long, device=device)
    for i in range(max_new_tokens):
        logits, _ = model(step_input if use_cache else ids, kv_cache=cache)
        next_logits = logits[:, -1]  # (1, V)
        if i < min_new_tokens and len(stop):
            # As transformers' min_new_tokens: the stop tokens cannot be drawn yet.
            next_logits = next_logits.index_fill(-1, stop, float("-inf"))
        token = sample_next(next_logits, temperature, top_k, top_p, generator)  # (1,)
        yield int(token)
        if int(token) in stop_ids:
            return
        step_input = token[:, None]  # (1, 1)
        if not use_cache:
            ids = torch.cat([ids, step_input], dim=1)


def stream_text(tokenizer: Tokenizer, token_ids: Iterator[int]) -> Iterator[str]:
    """Text pieces as tokens arrive; a piece ending in a partial UTF-8 character waits."""
    ids: list[int] = []
    emitted = 0
    for token in token_ids:
        ids.append(token)
        text = tokenizer.decode(ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):  # an incomplete multi-byte character: wait for more bytes
            continue
        if len(text) > emitted:
            yield text[emitted:]
            emitted = len(text)
    text = tokenizer.decode(ids, skip_special_tokens=True)
    if len(text) > emitted:
        yield text[emitted:]


def stop_token_ids(tokenizer: Tokenizer) -> list[int]:
    """The end-of-text token ends a generation (the packer puts it between documents)."""
    eot = tokenizer.token_to_id(EOT_TOKEN)
    return [] if eot is None else [eot]
