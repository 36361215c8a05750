"""Sampling: KV-cache equivalence, top-k / top-p / temperature, text streaming, checkpoint loading."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tests.support.models import tiny_model
from tokenizers import Tokenizer

from lmstream.config import parse_training_config
from lmstream.distributed import pick_device
from lmstream.errors import CheckpointError, ConfigError
from lmstream.generate import (
    generate_tokens,
    sample_next,
    stop_token_ids,
    stream_text,
)
from lmstream.model.transformer import Transformer
from lmstream.tokenizer import train_bpe
from lmstream.train.checkpoint import (
    load_checkpoint_model,
    load_checkpoint_tokenizer,
    save_checkpoint,
)

SENTENCES = [
    f"the {a} {b} walks over the {c} hill, déjà vu № {i}"
    for i, (a, b, c) in enumerate(
        (a, b, c)
        for a in ("quick", "slow", "red")
        for b in ("fox", "dog")
        for c in ("green", "old")
    )
]


def _tokenizer() -> Tokenizer:
    tok = train_bpe(SENTENCES * 3, 300, ["<|endoftext|>", "<|pad|>"])
    return tok


def _model(**overrides) -> Transformer:
    base = dict(num_key_value_heads=2, max_position_embeddings=48)
    return tiny_model(300, **{**base, **overrides}).eval()


@pytest.mark.parametrize("activation", ["gelu", "swiglu"])
@pytest.mark.parametrize("rope_mode", ["standard", "interleaved"])
def test_greedy_decoding_with_and_without_cache_gives_the_same_tokens(
    activation: str, rope_mode: str
) -> None:
    # Large untied init: a random model whose greedy path wanders (small tied init echoes).
    model = _model(activation=activation, rope_mode=rope_mode, init_std=0.3, tie_embeddings=False)
    prompt = [5, 17, 42, 7, 99]
    cached = list(generate_tokens(model, prompt, 30, temperature=0))
    uncached = list(generate_tokens(model, prompt, 30, temperature=0, use_cache=False))
    assert cached == uncached
    assert len(set(cached)) > 3  # a random model's greedy path is not one token repeated


def test_seeded_sampling_is_reproducible_and_seeds_differ() -> None:
    model = _model()
    run = lambda seed: list(generate_tokens(model, [1, 2, 3], 20, temperature=1.0, seed=seed))  # noqa: E731
    assert run(7) == run(7)
    assert run(7) != run(8)


def test_generation_stops_at_a_stop_token_and_at_max_positions() -> None:
    model = _model()
    greedy = list(generate_tokens(model, [1, 2, 3], 10, temperature=0))
    stopped = list(generate_tokens(model, [1, 2, 3], 10, temperature=0, stop_ids=[greedy[2]]))
    assert stopped == greedy[: greedy.index(greedy[2]) + 1]
    assert len(list(generate_tokens(model, list(range(40)), 100, temperature=0))) == 8
    with pytest.raises(ConfigError, match="the prompt has 48 tokens"):
        list(generate_tokens(model, list(range(48)), 5))


def test_min_new_tokens_keeps_stop_tokens_out_until_reached() -> None:
    model = _model()
    greedy = list(generate_tokens(model, [1, 2, 3], 10, temperature=0))
    stop = greedy[0]  # greedy would stop at once
    early = list(generate_tokens(model, [1, 2, 3], 10, temperature=0, stop_ids=[stop]))
    assert early == [stop]
    held = list(
        generate_tokens(model, [1, 2, 3], 10, temperature=0, stop_ids=[stop], min_new_tokens=4)
    )
    assert len(held) >= 4 and stop not in held[:4]
    sampled = [
        list(
            generate_tokens(
                model, [1, 2, 3], 6, temperature=1.0, seed=s, stop_ids=[stop], min_new_tokens=6
            )
        )
        for s in range(5)
    ]
    assert all(len(x) == 6 and stop not in x for x in sampled)


def test_top_k_and_top_p_restrict_the_candidates() -> None:
    logits = torch.tensor([[0.0, 3.0, 2.9, 1.0, -1.0]])
    gen = torch.Generator().manual_seed(0)
    draws = lambda **kw: {int(sample_next(logits, generator=gen, **kw)) for _ in range(300)}  # noqa: E731
    assert draws(top_k=2) == {1, 2}
    assert draws(top_k=1) == {1}
    # probabilities ~ [.02, .44, .40, .06, .01]: mass .84 needs tokens 1 and 2.
    assert draws(top_p=0.8) == {1, 2}
    assert draws(top_p=0.3) == {1}
    assert draws(temperature=0.01) == {1}
    assert int(sample_next(logits, temperature=0)) == 1
    assert len(draws(temperature=1.0)) == 5


def test_stream_text_waits_for_whole_characters() -> None:
    tok = _tokenizer()
    text = "déjà vu № 7 over the old hill €"
    ids = tok.encode(text).ids
    pieces = list(stream_text(tok, iter(ids)))
    assert "".join(pieces) == text
    assert all("\ufffd" not in piece for piece in pieces)
    # "€" never occurred in training: its 3 UTF-8 bytes are 3 tokens, streamed as one piece.
    euro = tok.encode("€").ids
    assert len(euro) == 3
    assert list(stream_text(tok, iter(euro))) == ["€"]


def _checkpoint(tmp_path: Path, model: Transformer) -> Path:
    tok = _tokenizer()
    tok.save(str(tmp_path / "tokenizer.json"))
    data = {
        "model": {**model.config.model_dump(), "vocab_size": model.vocab_size},
        "tokenizer": {"tokenizer_json": "tokenizer.json"},
        "data": {"batch_size": 1, "sequence_length": 16},
        "optimizer": {"learning_rate": 1e-3},
        "scheduler": {"total_steps": 10},
    }
    cfg = parse_training_config(data, tmp_path)
    return save_checkpoint(tmp_path / "checkpoints", 5, model.state_dict(), cfg, {"step": 5})


def test_a_saved_checkpoint_loads_and_generates_the_same_tokens(tmp_path: Path) -> None:
    model = _model(tie_embeddings=False, norm="rmsnorm")
    _checkpoint(tmp_path, model)
    loaded, cfg, folder = load_checkpoint_model(tmp_path)  # a run folder resolves to step 5
    assert folder.name == "step-00000005"
    expected = list(generate_tokens(model, [4, 5, 6], 12, temperature=0))
    assert list(generate_tokens(loaded, [4, 5, 6], 12, temperature=0)) == expected
    tok = load_checkpoint_tokenizer(folder, cfg)
    assert stop_token_ids(tok) == [tok.token_to_id("<|endoftext|>")]


def test_mismatched_weights_are_a_checkpoint_error(tmp_path: Path) -> None:
    model = _model()
    folder = _checkpoint(tmp_path, model)
    config = (folder / "config.yaml").read_text().replace("num_layers: 2", "num_layers: 3")
    (folder / "config.yaml").write_text(config)
    with pytest.raises(CheckpointError, match="do not match the saved model config"):
        load_checkpoint_model(folder, verify=False)  # edited on purpose


def test_device_names_are_checked() -> None:
    assert pick_device("cpu") == torch.device("cpu")
    with pytest.raises(ConfigError, match="--device: expected auto, cpu, cuda or cuda:N"):
        pick_device("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA device"):
            pick_device("cuda")


def test_top_p_zero_keeps_the_top_token_as_transformers_does() -> None:
    # transformers' TopPLogitsWarper always keeps at least one token (min_tokens_to_keep=1).
    logits = torch.tensor([[0.1, 0.3, 0.2, 0.25]]).repeat(64, 1)
    gen = torch.Generator().manual_seed(0)
    picks = sample_next(logits, temperature=1.0, top_p=0.0, generator=gen)
    assert picks.tolist() == [1] * 64


# ------------------------------------------------------------------ `lmstream generate` CLI


def _generate(capsys, folder: Path, prompt: str, *args: str) -> tuple[int, str, str]:
    from lmstream.cli import main

    code = main(["generate", "--checkpoint", str(folder), "--prompt", prompt,
                 "--temperature", "0", "--device", "cpu", *args])  # fmt: skip
    out = capsys.readouterr()
    return code, out.out, out.err


def _prompt_of(tokens: int) -> str:
    """A prompt that encodes (after the leading <|endoftext|>) to at least ``tokens`` tokens."""
    tok, text = _tokenizer(), ""
    for word in " ".join(SENTENCES * 4).split():
        text = f"{text} {word}".strip()
        if len(tok.encode(text).ids) + 1 >= tokens:
            return text
    raise AssertionError("corpus too short")


def test_generate_says_when_the_context_is_full(tmp_path: Path, capsys) -> None:
    folder = _checkpoint(tmp_path, _model())  # 48 positions
    prompt = _prompt_of(40)
    code, out, err = _generate(capsys, folder, prompt, "--max-new-tokens", "20",
                               "--min-new-tokens", "20")  # fmt: skip
    assert code == 0 and out.startswith(prompt)
    room = 48 - (len(_tokenizer().encode(prompt).ids) + 1)
    assert f"stopped after {room} of 20 new tokens: the context is full" in err
    code, out, err = _generate(capsys, folder, "the quick fox", "--max-new-tokens", "5",
                               "--min-new-tokens", "5")  # fmt: skip
    assert code == 0 and "context is full" not in err


def test_a_refused_prompt_is_not_echoed(tmp_path: Path, capsys) -> None:
    folder = _checkpoint(tmp_path, _model())
    code, out, err = _generate(capsys, folder, _prompt_of(60))
    assert code != 0 and out == ""
    lines = err.strip().splitlines()
    assert "--truncate-prompt" in lines[-1] and "max_position_embeddings 48" in lines[-1]


def test_truncate_prompt_keeps_its_tail(tmp_path: Path, capsys) -> None:
    folder = _checkpoint(tmp_path, _model())
    prompt = _prompt_of(60)
    code, out, err = _generate(capsys, folder, prompt, "--truncate-prompt",
                               "--max-new-tokens", "10", "--min-new-tokens", "10")  # fmt: skip
    assert code == 0
    kept = out.split("\n")[0]
    assert "prompt cut to its last 38 tokens" in err and "context is full" not in err
    tok = _tokenizer()
    tail = tok.decode(tok.encode(prompt).ids[-38:])
    assert kept.startswith(tail) and len(tok.encode(kept).ids) >= 38 + 1
