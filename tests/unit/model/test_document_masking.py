"""Document-aware attention (model.document_masking): every document of a packed row, pieces
split across rows included, gets the logits it gets when run alone; the mask's flex form equals
its dense form; KV-cache decoding equals a full forward; the config's checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml
from tests.support.models import tiny_model_config

from lmstream.cli import main
from lmstream.data.packing import Packer
from lmstream.model.attention_mask import (
    attend,
    build_document_mask,
    document_ids,
    document_positions,
)
from lmstream.model.transformer import Transformer

V, EOT, T = 61, 0, 24


def _models(positions: str | None = None, **shape) -> tuple[Transformer, Transformer]:
    """(masked, plain): the same weights, with and without document masking."""
    torch.manual_seed(0)
    plain = Transformer(tiny_model_config(num_key_value_heads=2, **shape), V).eval()
    masked_cfg = tiny_model_config(
        num_key_value_heads=2,
        document_masking=True,
        document_separator_id=EOT,
        document_positions=positions,
        **shape,
    )
    masked = Transformer(masked_cfg, V).eval()
    masked.load_state_dict(plain.state_dict())
    return masked, plain


def _packed_rows(lengths: list[int], n_rows: int) -> np.ndarray:
    """Documents of ``lengths`` random non-separator tokens, packed by the real Packer into
    ``n_rows`` rows of T + 1 (inputs are ``row[:-1]``, as the loader cuts them)."""
    rng = np.random.default_rng(0)
    packer = Packer(T + 1, EOT)
    for n in lengths:
        packer.add(rng.integers(1, V, n))
    return packer.take(n_rows)


def _pieces(row: torch.Tensor) -> list[tuple[int, int]]:
    """(start, end) of each document piece in one row of inputs: a separator ends a piece."""
    n = len(row)
    cuts = [0, *(i + 1 for i, t in enumerate(row.tolist()) if t == EOT and i + 1 < n), n]
    return list(zip(cuts[:-1], cuts[1:], strict=False))


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"activation": "swiglu", "norm": "rmsnorm", "rope_mode": "interleaved"},
        {"activation": "swiglu", "norm": "rmsnorm", "qk_norm": True},  # the two recipe options
    ],
)
@torch.no_grad()
def test_each_document_of_a_packed_row_equals_the_document_run_alone(overrides) -> None:
    masked, plain = _models(**overrides)
    # Lengths chosen so documents cross row boundaries (a 40-token one spans two rows).
    rows = _packed_rows([5, 40, 3, 11, 1, 17, 8, 30, 6], n_rows=5)
    inputs = torch.from_numpy(rows[:, :-1]).long()  # (5, T)
    packed = masked(inputs)[0]
    compared, split = 0, 0
    for r in range(inputs.shape[0]):
        for start, end in _pieces(inputs[r]):
            alone = plain(inputs[r : r + 1, start:end])[0][0]  # the piece as its own sequence
            diff = (packed[r, start:end] - alone).abs().max().item()
            assert diff <= 1e-5, f"row {r}, tokens {start}:{end}: max abs diff {diff}"
            compared += 1
            split += start == 0 and r > 0 and inputs[r - 1, -1] != EOT
    assert compared >= 10 and split >= 2  # several documents, pieces continued from a row
    # Without the mask the same rows differ: later documents would see earlier ones.
    assert (plain(inputs)[0] - packed).abs().max() > 1e-3


@torch.no_grad()
def test_a_row_of_one_document_is_unchanged_by_masking() -> None:
    masked, plain = _models()
    ids = torch.randint(1, V, (3, T))
    torch.testing.assert_close(masked(ids)[0], plain(ids)[0], rtol=0, atol=1e-6)


@torch.no_grad()
def test_continue_positions_mask_documents_but_keep_row_positions() -> None:
    masked, plain = _models("continue")
    rows = torch.randint(1, V, (2, T))
    rows[:, 9] = EOT  # documents 0..9 and 10..T-1
    logits = masked(rows)[0]
    torch.testing.assert_close(logits[:, :10], plain(rows[:, :10])[0], rtol=0, atol=1e-5)
    changed = rows.clone()
    changed[:, :9] = (changed[:, :9] + 1) % (V - 1) + 1  # another first document
    torch.testing.assert_close(masked(changed)[0][:, 10:], logits[:, 10:], rtol=0, atol=1e-5)
    # Positions run on along the row, yet RoPE scores depend only on the distance between
    # query and key: within its document the second one matches its run-alone self (rounding).
    assert masked._documents(rows, None, torch.float32)[1].shape == (T, masked.config.head_dim)
    torch.testing.assert_close(logits[:, 10:], plain(rows[:, 10:])[0], rtol=0, atol=1e-5)


def test_document_ids_and_positions() -> None:
    tokens = torch.tensor([[5, 0, 7, 8, 0, 0, 9], [0, 3, 4, 5, 6, 0, 2]])
    assert document_ids(tokens, 0).tolist() == [[0, 0, 1, 1, 1, 2, 3], [0, 1, 1, 1, 1, 1, 2]]
    positions = document_positions(document_ids(tokens, 0))
    assert positions.tolist() == [[0, 1, 0, 1, 2, 0, 0], [0, 0, 1, 2, 3, 4, 0]]


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@torch.no_grad()
def test_flex_block_mask_equals_the_dense_mask() -> None:
    # The CUDA path's block mask, built and run eagerly on CPU: the same attention as SDPA's.
    torch.manual_seed(0)
    tokens = torch.randint(1, V, (2, 200))  # > one 128-token block
    tokens[0, [17, 130, 131, 190]] = EOT
    tokens[1, [127, 128]] = EOT
    docs = document_ids(tokens, EOT)
    q, k, v = torch.randn(2, 4, 200, 8), torch.randn(2, 2, 200, 8), torch.randn(2, 2, 200, 8)
    flex = build_document_mask(docs, 0, flex=True, compiled=False)
    dense = build_document_mask(docs, 0, flex=False)
    assert flex.block is not None and dense.dense is not None
    a = attend(q, k, v, flex, dropout=0.0, enable_gqa=True)
    b = attend(q, k, v, dense, dropout=0.0, enable_gqa=True)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


@pytest.mark.parametrize("positions", ["restart", "continue"])
@torch.no_grad()
def test_kv_cache_decoding_equals_the_full_forward(positions: str) -> None:
    masked, _ = _models(positions)
    ids = torch.randint(1, V, (2, 20))
    ids[0, [4, 11]] = EOT
    ids[1, 15] = EOT
    full = masked(ids)[0]
    cache = masked.new_kv_cache(2, max_len=20)
    steps = [masked(ids[:, :8], kv_cache=cache)[0]]  # prefill across a boundary
    steps += [masked(ids[:, i : i + 1], kv_cache=cache)[0] for i in range(8, 14)]
    steps.append(masked(ids[:, 14:], kv_cache=cache)[0])  # a chunk that holds a boundary
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=0, atol=1e-5)


def test_training_gradients_stay_inside_documents() -> None:
    # In training mode with attention dropout (the dense path: flex attention has no dropout),
    # a document's loss sends no gradient into another document's inputs.
    masked, _ = _models(attn_dropout=0.1)
    masked.train()
    ids = torch.randint(1, V, (1, T))
    ids[0, 9] = EOT
    embedded = {}

    def keep(_module, _inputs, out):
        out.retain_grad()
        embedded["x"] = out

    masked.embed.register_forward_hook(keep)
    logits, _ = masked(ids)
    logits[0, 12:].sum().backward()
    grad = embedded["x"].grad[0]  # (T, D)
    assert grad[:10].abs().max() == 0 and grad[10:].abs().max() > 0


BAD_FIELDS = [
    ({"document_positions": "restart"}, "model.document_positions: applies only"),
    ({"document_separator_id": 0}, "model.document_separator_id: applies only"),
    (
        {"document_masking": True, "document_separator_id": 99, "vocab_size": 50},
        "model.document_separator_id: 99 is not a token id",
    ),
    ({"document_masking": True, "document_positions": "reset"}, "model.document_positions: "),
    ({"document_masking": "sometimes"}, "model.document_masking: "),
]


@pytest.mark.parametrize("fields,needle", BAD_FIELDS)
def test_bad_document_fields_name_the_field(tmp_path, seed_yaml_text, capsys, fields, needle):
    data = yaml.safe_load(seed_yaml_text)
    data["model"].update(fields)
    path = tmp_path / "training.yaml"
    path.write_text(yaml.safe_dump(data))
    assert main(["train", "--config", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err


def test_masking_defaults_off() -> None:
    cfg = tiny_model_config()
    assert not cfg.document_masking and not cfg.restart_positions
    assert tiny_model_config(document_masking=True).restart_positions
