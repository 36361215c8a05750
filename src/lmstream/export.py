"""Export to a Hugging Face transformers folder that loads with no custom code, checked by logits.

Each (activation, norm) pair maps to the transformers family that computes *exactly* the same
function (pre-norm blocks, full-width RoPE, no linear biases, GQA):

    swiglu + rmsnorm    LlamaForCausalLM
    gelu   + rmsnorm    ArceeForCausalLM     (Llama with a non-gated MLP, hidden_act "gelu")
    gelu   + layernorm  Starcoder2ForCausalLM (use_bias false; its LayerNorms keep their bias, as ours)
    swiglu + layernorm  StableLmForCausalLM  (partial_rotary_factor 1, sequential residual)

With ``qk_norm`` (RMSNorm over each head's q and k before RoPE) only one family computes the
same function: swiglu + rmsnorm exports as Qwen3ForCausalLM (its q_norm / k_norm are exactly
that). OLMo2 normalises the whole q / k projection, not each head, and puts its norms after the
sublayers; StableLM's qk_layernorm is a LayerNorm: neither matches, so other pairs are refused.

``rope_mode: interleaved`` (GPT-J pairs 2i, 2i+1) is exported by permuting each head's q and k
rows into the half-split order these families use: attention scores q.k are unchanged by the
same permutation of both, so the exported model is the same function (Meta's Llama weights go
through the same permutation in transformers' own converter).

The folder is written beside its target, loaded back with ``AutoModelForCausalLM`` and
``AutoTokenizer``, compared (fp32 logits, max abs difference <= 1e-4; identical token ids) and
only then renamed into place, so a failed export never leaves a folder that looks usable.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer

from lmstream.config import EOT_TOKEN, ModelConfig
from lmstream.errors import ConfigError, LmstreamError
from lmstream.model.transformer import Transformer
from lmstream.train.checkpoint import with_user_umask

TOLERANCE = 1e-4
SAMPLE_TEXT = "In the beginning was the word, and the word was 42. Ünïcödé → ok?"


@dataclass(frozen=True)
class Architecture:
    """A transformers model family our config maps onto exactly."""

    class_name: str
    config_name: str
    model_type: str
    added_in: str  # first transformers release that has the class
    gated_mlp: bool  # gate_proj / up_proj / down_proj (else up_proj or c_fc / down_proj or c_proj)


ARCHITECTURES: dict[tuple[str, str], Architecture] = {
    ("swiglu", "rmsnorm"): Architecture("LlamaForCausalLM", "LlamaConfig", "llama", "4.28", True),
    ("gelu", "rmsnorm"): Architecture("ArceeForCausalLM", "ArceeConfig", "arcee", "4.53", False),
    ("gelu", "layernorm"): Architecture(
        "Starcoder2ForCausalLM", "Starcoder2Config", "starcoder2", "4.39", False
    ),
    ("swiglu", "layernorm"): Architecture(
        "StableLmForCausalLM", "StableLmConfig", "stablelm", "4.38", True
    ),
}


# Per-head QK-norm: (activation, norm) -> the family with per-head RMS q/k norms.
QK_NORM_ARCHITECTURES: dict[tuple[str, str], Architecture] = {
    ("swiglu", "rmsnorm"): Architecture("Qwen3ForCausalLM", "Qwen3Config", "qwen3", "4.51", True),
}


def _version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for piece in version.split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def choose_architecture(cfg: ModelConfig, transformers_version: str | None = None) -> Architecture:
    """The exact transformers counterpart of ``cfg``; ConfigError naming the blocking option."""
    if transformers_version is None:
        import transformers

        transformers_version = transformers.__version__
    if cfg.qk_norm:
        arch = QK_NORM_ARCHITECTURES.get((cfg.activation, cfg.norm))
        if arch is None:
            raise ConfigError(
                f"model.qk_norm: per-head QK-norm exports only with model.activation swiglu and "
                f"model.norm rmsnorm (as Qwen3ForCausalLM); this model has {cfg.activation} + "
                f"{cfg.norm}, which no transformers family computes exactly"
            )
    else:
        arch = ARCHITECTURES.get((cfg.activation, cfg.norm))
    if arch is None:  # unreachable with today's schema; guards future activation/norm options
        raise ConfigError(
            f"model.activation '{cfg.activation}' with model.norm '{cfg.norm}' has no exact "
            f"transformers counterpart; supported pairs: {', '.join('+'.join(k) for k in ARCHITECTURES)}"
        )
    if _version_tuple(transformers_version) < _version_tuple(arch.added_in):
        what = " and model.qk_norm" if cfg.qk_norm else ""
        raise ConfigError(
            f"model.activation '{cfg.activation}' with model.norm '{cfg.norm}'{what} exports as "
            f"{arch.class_name}, which transformers {transformers_version} lacks (added in "
            f"{arch.added_in}); upgrade with `pip install -U 'transformers>={arch.added_in}'`"
        )
    return arch


def hf_config(model: Transformer, arch: Architecture, tokenizer: Tokenizer | None = None):
    """The transformers config object describing ``model`` in ``arch``'s terms."""
    import transformers

    cfg = model.config
    eot = tokenizer.token_to_id(EOT_TOKEN) if tokenizer is not None else None
    pad = tokenizer.token_to_id("<|pad|>") if tokenizer is not None else None
    common = dict(
        vocab_size=model.vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.kv_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        rope_theta=cfg.theta,
        tie_word_embeddings=cfg.tie_embeddings,
        hidden_act="silu" if cfg.activation == "swiglu" else "gelu",
        initializer_range=cfg.init_std,
        bos_token_id=eot,
        eos_token_id=eot,
        pad_token_id=pad,
        architectures=[arch.class_name],
    )
    extra = {
        "llama": dict(rms_norm_eps=cfg.norm_eps, attention_bias=False, mlp_bias=False),
        "arcee": dict(rms_norm_eps=cfg.norm_eps, attention_bias=False, mlp_bias=False),
        "qwen3": dict(
            rms_norm_eps=cfg.norm_eps,
            attention_bias=False,
            head_dim=cfg.head_dim,
            use_sliding_window=False,
        ),
        "starcoder2": dict(norm_epsilon=cfg.norm_eps, use_bias=False, sliding_window=None),
        "stablelm": dict(
            layer_norm_eps=cfg.norm_eps,
            use_qkv_bias=False,
            qk_layernorm=False,
            use_parallel_residual=False,
            partial_rotary_factor=1.0,
        ),
    }[arch.model_type]
    return getattr(transformers, arch.config_name)(**common, **extra)


def _half_split_order(head_dim: int) -> torch.Tensor:
    """Row order that turns interleaved RoPE pairs (2i, 2i+1) into half-split pairs (i, i+E/2)."""
    return torch.cat([torch.arange(0, head_dim, 2), torch.arange(1, head_dim, 2)])


def convert_state_dict(model: Transformer, arch: Architecture) -> dict[str, torch.Tensor]:
    """Our weights under ``arch``'s parameter names (fp32, contiguous, each tensor once)."""
    cfg = model.config
    H, K, E = cfg.num_attention_heads, cfg.kv_heads, cfg.head_dim
    state = {k: v.detach().to("cpu", torch.float32) for k, v in model.state_dict().items()}
    out = {"model.embed_tokens.weight": state.pop("embed.weight")}
    if "head.weight" in state:
        out["lm_head.weight"] = state.pop("head.weight")
    for i in range(cfg.num_layers):
        ours, theirs = f"blocks.{i}.", f"model.layers.{i}."
        q, k, v = state[ours + "attn.qkv.weight"].split([H * E, K * E, K * E])
        if cfg.rope_layout == "interleaved":
            order = _half_split_order(E)
            q = q.view(H, E, -1)[:, order].reshape(H * E, -1)
            k = k.view(K, E, -1)[:, order].reshape(K * E, -1)
        attn = theirs + "self_attn."
        out.update(
            {attn + "q_proj.weight": q, attn + "k_proj.weight": k, attn + "v_proj.weight": v}
        )
        out[attn + "o_proj.weight"] = state[ours + "attn.proj.weight"]
        for name in ("q_norm", "k_norm"):  # per-head gains: the same row order as q and k
            if f"{ours}attn.{name}.weight" in state:
                gain = state[f"{ours}attn.{name}.weight"]
                if cfg.rope_layout == "interleaved":
                    gain = gain[_half_split_order(E)]
                out[f"{attn}{name}.weight"] = gain
        fc, proj = state[ours + "mlp.fc.weight"], state[ours + "mlp.proj.weight"]
        mlp = theirs + "mlp."
        if arch.gated_mlp:
            gate, up = fc.chunk(2)
            out.update({mlp + "gate_proj.weight": gate, mlp + "up_proj.weight": up})
            out[mlp + "down_proj.weight"] = proj
        elif arch.model_type == "starcoder2":
            out.update({mlp + "c_fc.weight": fc, mlp + "c_proj.weight": proj})
        else:
            out.update({mlp + "up_proj.weight": fc, mlp + "down_proj.weight": proj})
        for our_norm, their_norm in (
            ("attn_norm", "input_layernorm"),
            ("mlp_norm", "post_attention_layernorm"),
        ):
            for param in ("weight", "bias"):
                if f"{ours}{our_norm}.{param}" in state:
                    out[f"{theirs}{their_norm}.{param}"] = state[f"{ours}{our_norm}.{param}"]
    for param in ("weight", "bias"):
        if f"norm.{param}" in state:
            out[f"model.norm.{param}"] = state[f"norm.{param}"]
    return {name: t.contiguous().clone() for name, t in out.items()}


def save_hf_tokenizer(tokenizer: Tokenizer, directory: Path) -> None:
    """tokenizer.json + tokenizer_config.json + special tokens, loadable by AutoTokenizer."""
    from transformers import PreTrainedTokenizerFast

    specials = {}
    if tokenizer.token_to_id(EOT_TOKEN) is not None:
        specials.update(bos_token=EOT_TOKEN, eos_token=EOT_TOKEN)
    if tokenizer.token_to_id("<|pad|>") is not None:
        specials["pad_token"] = "<|pad|>"
    fast = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(tokenizer.to_str()), **specials
    )
    fast.save_pretrained(str(directory))


def _sample_batch(model: Transformer, tokenizer: Tokenizer | None) -> torch.Tensor:
    """Two rows (B=2): the sample text's ids when a tokenizer is given, plus random ids."""
    length = min(32, model.config.max_position_embeddings)
    gen = torch.Generator().manual_seed(0)
    rows = torch.randint(0, model.vocab_size, (2, length), generator=gen)
    if tokenizer is not None:
        ids = tokenizer.encode(SAMPLE_TEXT).ids[:length]
        rows[0, : len(ids)] = torch.tensor(ids)
    separator = model.config.document_separator_id
    if model.config.document_masking and separator is not None:
        # One document per row: the exported model attends causally over the whole input, as
        # the masked model does within one document (the transformers model has no mask).
        rows[rows == separator] = (separator + 1) % model.vocab_size
    return rows


@torch.no_grad()
def verify_export(model: Transformer, directory: Path, tokenizer: Tokenizer | None) -> float:
    """Load ``directory`` with the Auto classes and compare to ``model``; the max abs logit diff."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a per-tensor progress bar is noise in a CLI export
    hf, info = AutoModelForCausalLM.from_pretrained(str(directory), output_loading_info=True)
    hf = hf.float().eval()
    tied = {"lm_head.weight"} if model.config.tie_embeddings else set()
    missing = set(info["missing_keys"]) - tied
    if missing or info["unexpected_keys"]:
        raise LmstreamError(
            f"export check failed: transformers reports missing weights {sorted(missing)} and "
            f"unexpected weights {sorted(info['unexpected_keys'])}"
        )
    if tokenizer is not None:
        theirs = AutoTokenizer.from_pretrained(str(directory))(SAMPLE_TEXT)["input_ids"]
        if list(theirs) != tokenizer.encode(SAMPLE_TEXT).ids:
            raise LmstreamError(
                "export check failed: AutoTokenizer encodes the sample text differently"
            )
    batch = _sample_batch(model, tokenizer)
    was_training = model.training
    model.eval()
    device = model.embed.weight.device
    ours = model(batch.to(device))[0].float().cpu()
    model.train(was_training)
    return float((ours - hf(batch).logits.float()).abs().max())


@dataclass(frozen=True)
class ExportResult:
    directory: Path
    architecture: str
    max_abs_diff: float


def export_model(
    model: Transformer,
    tokenizer: Tokenizer | None,
    out_dir: str | os.PathLike,
    *,
    force: bool = False,
) -> ExportResult:
    """Write, verify and move into place a transformers folder for ``model`` (see module doc)."""
    arch = choose_architecture(model.config)
    out = Path(out_dir).expanduser().absolute()
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise ConfigError(
            f"--out: {out} exists and is not empty; choose another folder or pass --force"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".tmp-{out.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        hf_config(model, arch, tokenizer).save_pretrained(str(tmp))
        save_file(
            convert_state_dict(model, arch),
            str(tmp / "model.safetensors"),
            metadata={"format": "pt"},
        )
        with_user_umask(tmp / "model.safetensors")
        if tokenizer is not None:
            save_hf_tokenizer(tokenizer, tmp)
        diff = verify_export(model, tmp, tokenizer)
        if not diff <= TOLERANCE:  # also catches NaN
            raise LmstreamError(
                f"export check failed: logits differ from {arch.class_name}'s by {diff:.3g} "
                f"(limit {TOLERANCE:g}); nothing was written to {out}"
            )
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out) if out.is_dir() else out.unlink()
    os.rename(tmp, out)
    return ExportResult(out, arch.class_name, diff)


def export_checkpoint(
    checkpoint: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    force: bool = False,
    card_name: str | None = None,
    license: str | None = None,
    verify: bool = True,
) -> ExportResult:
    """Export a training checkpoint (step, checkpoints or run folder) with its tokenizer and a
    README.md model card (``card_name``: the name it shows, e.g. the Hub repo id)."""
    from lmstream.model_card import write_model_card
    from lmstream.train.checkpoint import load_checkpoint_model, load_checkpoint_tokenizer

    model, cfg, folder = load_checkpoint_model(checkpoint, "cpu", verify=verify)
    choose_architecture(model.config)  # refuse before loading the tokenizer
    result = export_model(model, load_checkpoint_tokenizer(folder, cfg), out_dir, force=force)
    write_model_card(
        model, cfg, folder, result.directory, result.architecture, name=card_name, license=license
    )
    return result
