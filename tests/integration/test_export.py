"""Export to transformers: logit parity for every exportable config, refusals, the tokenizer, CLIs."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
from tests.support.models import tiny_model
from tokenizers import Tokenizer

from lmstream.cli import main
from lmstream.config import parse_training_config
from lmstream.errors import ConfigError
from lmstream.export import TOLERANCE, choose_architecture, export_model, verify_export
from lmstream.generate import generate_tokens
from lmstream.model.transformer import Transformer
from lmstream.tokenizer import train_bpe
from lmstream.train.checkpoint import save_checkpoint

transformers = pytest.importorskip("transformers")

VOCAB = 300


def _tokenizer() -> Tokenizer:
    words = ["the", "word", "was", "in", "beginning", "light", "and", "darkness", "day"]
    sentences = [" ".join(p) + "." for p in itertools.permutations(words, 4)][:400]
    return train_bpe(sentences, VOCAB, ["<|endoftext|>", "<|pad|>"])


def _model(**overrides) -> Transformer:
    """A small model with non-trivial norms (weights and biases away from 1 and 0)."""
    base = dict(
        hidden_size=64,
        intermediate_size=96,
        num_key_value_heads=2,
        max_position_embeddings=64,
        rope_theta=500.0,
        norm_eps=1e-6,
        init_std=0.1,
    )
    model = tiny_model(VOCAB, **{**base, **overrides})
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.add_(0.1 * torch.randn_like(param))
    return model.eval()


COMBINATIONS = [
    dict(activation=a, norm=n, rope_mode=r, tie_embeddings=t)
    for a, n, r, t in itertools.product(
        ["swiglu", "gelu"], ["rmsnorm", "layernorm"], ["standard", "interleaved"], [True, False]
    )
]


@pytest.mark.parametrize("combo", COMBINATIONS, ids=lambda c: "-".join(map(str, c.values())))
def test_logits_match_transformers_for_every_exportable_config(combo: dict, tmp_path: Path) -> None:
    model = _model(**combo, num_key_value_heads=1 if combo["tie_embeddings"] else 2)
    result = export_model(model, None, tmp_path / "hf")
    assert result.max_abs_diff <= TOLERANCE
    expected = {
        ("swiglu", "rmsnorm"): "LlamaForCausalLM",
        ("gelu", "rmsnorm"): "ArceeForCausalLM",
        ("gelu", "layernorm"): "Starcoder2ForCausalLM",
        ("swiglu", "layernorm"): "StableLmForCausalLM",
    }[(combo["activation"], combo["norm"])]
    assert result.architecture == expected
    # Independent of export's own check: a fresh Auto load agrees on a new batch.
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf")).float().eval()
    assert type(hf).__name__ == expected
    ids = torch.randint(0, VOCAB, (3, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        diff = (model(ids)[0] - hf(ids).logits).abs().max().item()
    assert diff <= TOLERANCE
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]  # no temporary folder left


@pytest.mark.parametrize("rope_mode", ["standard", "interleaved"])
@pytest.mark.parametrize("tie", [True, False])
def test_qk_norm_exports_as_qwen3_with_the_same_logits(rope_mode, tie, tmp_path: Path) -> None:
    model = _model(
        activation="swiglu", norm="rmsnorm", qk_norm=True, rope_mode=rope_mode, tie_embeddings=tie
    )
    assert model.blocks[0].attn.q_norm.weight.std() > 0.05  # gains away from 1: they must map
    result = export_model(model, None, tmp_path / "hf")
    assert result.architecture == "Qwen3ForCausalLM" and result.max_abs_diff <= TOLERANCE
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf")).float().eval()
    ids = torch.randint(0, VOCAB, (3, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (model(ids)[0] - hf(ids).logits).abs().max().item() <= TOLERANCE


@pytest.mark.parametrize(
    ("activation", "norm"), [("gelu", "rmsnorm"), ("gelu", "layernorm"), ("swiglu", "layernorm")]
)
def test_qk_norm_without_an_exact_family_is_refused(activation, norm, tmp_path: Path) -> None:
    model = _model(activation=activation, norm=norm, qk_norm=True)
    with pytest.raises(ConfigError, match=r"^model\.qk_norm: .*Qwen3ForCausalLM") as err:
        export_model(model, None, tmp_path / "hf")
    assert "\n" not in str(err.value) and not (tmp_path / "hf").exists()


def test_the_check_detects_different_weights(tmp_path: Path) -> None:
    export_model(_model(), None, tmp_path / "hf")
    other = _model(init_std=0.2)
    assert verify_export(other, tmp_path / "hf", None) > 1e-2


def test_an_architecture_missing_from_transformers_is_refused_with_the_blocking_option() -> None:
    cfg = _model(activation="gelu", norm="rmsnorm").config
    with pytest.raises(ConfigError) as err:
        choose_architecture(cfg, transformers_version="4.45.2")
    message = str(err.value)
    assert "model.activation 'gelu' with model.norm 'rmsnorm'" in message
    assert "ArceeForCausalLM" in message and "4.53" in message
    assert choose_architecture(cfg, "4.53.0").class_name == "ArceeForCausalLM"
    swiglu = _model(activation="swiglu", norm="rmsnorm").config
    assert choose_architecture(swiglu, "4.45.2").class_name == "LlamaForCausalLM"


def test_autotokenizer_loads_the_exported_tokenizer(tmp_path: Path) -> None:
    tok = _tokenizer()
    export_model(_model(), tok, tmp_path / "hf")
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    text = "In the beginning was the word. Ünïcödé!"
    assert hf_tok(text)["input_ids"] == tok.encode(text).ids
    assert hf_tok.decode(tok.encode(text).ids) == text
    assert hf_tok.eos_token == "<|endoftext|>" and hf_tok.pad_token == "<|pad|>"
    config = transformers.AutoConfig.from_pretrained(str(tmp_path / "hf"))
    assert config.eos_token_id == tok.token_to_id("<|endoftext|>")


def test_a_non_empty_out_folder_needs_force(tmp_path: Path) -> None:
    out = tmp_path / "hf"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="exists and is not empty; .*--force"):
        export_model(_model(), None, out)
    export_model(_model(), None, out, force=True)
    assert not (out / "keep.txt").exists() and (out / "config.json").is_file()


def _checkpoint(tmp_path: Path, model: Transformer) -> Path:
    _tokenizer().save(str(tmp_path / "tokenizer.json"))
    data = {
        "model": {**model.config.model_dump(), "vocab_size": VOCAB},
        "tokenizer": {"tokenizer_json": "tokenizer.json"},
        "data": {"batch_size": 1, "sequence_length": 16},
        "optimizer": {"learning_rate": 1e-3},
        "scheduler": {"total_steps": 10},
    }
    cfg = parse_training_config(data, tmp_path)
    return save_checkpoint(tmp_path / "checkpoints", 3, model.state_dict(), cfg, {"step": 3})


@pytest.mark.slow
def test_cli_export_then_generate_agree_with_transformers(tmp_path: Path, capsys) -> None:
    model = _model(activation="swiglu", norm="rmsnorm", tie_embeddings=False, init_std=0.3)
    _checkpoint(tmp_path, model)
    assert main(["export", "--checkpoint", str(tmp_path), "--out", str(tmp_path / "hf")]) == 0
    assert "as LlamaForCausalLM; logits match" in capsys.readouterr().out

    prompt = "In the beginning"
    args = ["generate", "--checkpoint", str(tmp_path / "checkpoints"), "--prompt", prompt]
    assert main([*args, "--max-new-tokens", "12", "--temperature", "0", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    tok = _tokenizer()
    # generate starts the context with <|endoftext|>, as every training document does
    context = [tok.token_to_id("<|endoftext|>"), *tok.encode(prompt).ids]
    ours = list(generate_tokens(model, context, 12, temperature=0))
    assert printed == prompt + tok.decode(ours, skip_special_tokens=True) + "\n"

    # transformers' own greedy decoding (its KV cache) from the exported folder gives our tokens.
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf")).float().eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    assert hf_tok(prompt)["input_ids"] == context[1:]
    ids = torch.tensor([context])
    out = hf.generate(ids, max_new_tokens=12, do_sample=False, eos_token_id=None)
    stop = tok.token_to_id("<|endoftext|>")
    theirs = out[0, ids.shape[1] :].tolist()
    if stop in theirs:
        theirs = theirs[: theirs.index(stop) + 1]
    assert theirs == ours


def test_cli_errors_are_one_line_with_an_exit_code(tmp_path: Path, capsys) -> None:
    code = main(["export", "--checkpoint", str(tmp_path / "none"), "--out", str(tmp_path / "o")])
    assert code == 4
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lmstream export: error:")
    code = main(["generate", "--checkpoint", str(tmp_path), "--prompt", "x", "--top-p", "2"])
    assert code == 2
    assert "--top-p: must be in (0, 1]" in capsys.readouterr().err
