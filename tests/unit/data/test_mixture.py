"""A data mixture's loader: token shares, exact resume with real DataLoader workers, resume with
changed weights or sources, and one-source checkpoints resumed into a mixture.

Real jsonl sources of unequal document lengths (tests/support/mixture.py), a real BPE, real
worker processes. Each document starts with its source's letter and number (``b0042``), so a
decoded batch tells which documents it holds.
"""

from __future__ import annotations

import copy
import re

import numpy as np
import pytest
import torch
from tests.support.mixture import mixture_config, write_sources

from lmstream.config import parse_training_config
from lmstream.data.loader import build_train_loader, build_validation_batches
from lmstream.data.mixture import choose
from lmstream.errors import CheckpointError
from lmstream.tokenizer import load_tokenizer

WEIGHTS3 = {"a": 0.5, "b": 0.3, "c": 0.2}


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("mix")
    return root, write_sources(root, {"a": 600, "b": 150, "c": 300}, files=3)


def _loader(sources, weights, tmp_path, **overrides):
    root, paths = sources
    cfg = parse_training_config(mixture_config(root, paths, weights, **overrides), root)
    run = tmp_path / "run"
    run.mkdir(exist_ok=True)
    return build_train_loader(cfg, load_tokenizer(cfg.tokenizer.tokenizer_json), run)


def _take(loader, n):
    """The loader's next n batches (one iterator per loader, kept between calls)."""
    if not hasattr(loader, "_test_it"):
        loader._test_it = iter(loader)
    return [next(loader._test_it) for _ in range(n)]


def _positions(state) -> list[dict]:
    """The workers' mixture states (mixer counts, source positions) inside a loader state."""
    if isinstance(state, dict):
        if "drawn" in state:
            return [state]
        return [p for v in state.values() for p in _positions(v)]
    return []


def _docs(tokenizer, batch) -> list[str]:
    return re.findall(r"[abc]\d{4}", tokenizer.decode(batch.inputs.flatten().tolist()))


def test_choose_keeps_every_share_within_a_point_over_any_million_tokens():
    # The mixer alone, fed documents of very unequal lengths (a: ~20, b: ~900, c: ~3000 tokens).
    rng = np.random.default_rng(0)
    for weights in ((0.7, 0.3), (0.5, 0.3, 0.2)):
        n, drawn, taken = len(weights), [0] * len(weights), [0] * len(weights)
        sizes = [rng.integers(1, 2 * s, size=200_000) for s in (20, 900, 3000)[:n]]
        rows = []
        while sum(drawn) < 2_500_000:
            k = choose(drawn, weights)
            size = int(sizes[k][taken[k]])
            taken[k] += 1
            drawn[k] += size
            rows.append((k, size))
        counts = np.zeros((len(rows), n))
        counts[np.arange(len(rows)), [k for k, _ in rows]] = [size for _, size in rows]
        _assert_windows(counts, weights, 1_000_000)


def _assert_windows(counts: np.ndarray, weights, window: int) -> None:
    """counts: tokens per source (columns) of consecutive items (rows). Every run of items
    holding >= window tokens (the shortest such run ending at each item) has each source's
    share within 1 point of its weight."""
    cum = np.vstack([np.zeros(len(weights)), np.cumsum(counts, axis=0)])
    total = cum.sum(axis=1)
    hi = np.nonzero(total >= window)[0]
    assert len(hi), "fewer tokens than one window"
    lo = np.searchsorted(total, total[hi] - window, side="right") - 1  # latest start that fits
    share = (cum[hi] - cum[lo]) / (total[hi] - total[lo])[:, None]
    worst = float(np.abs(share - np.array(weights)).max())
    assert worst < 0.01, worst


@pytest.fixture(scope="module")
def large_sources(tmp_path_factory):
    """Sources whose primary's pass holds ~10 of the batches below: each pass of the primary
    ends with a partly padded batch per worker, so a small primary would make most of the
    batches padded (the shares hold over real tokens either way)."""
    root = tmp_path_factory.mktemp("mixlarge")
    return root, write_sources(root, {"a": 6000, "b": 600, "c": 1200}, files=3)


@pytest.mark.slow
@pytest.mark.parametrize("weights", [{"a": 0.7, "b": 0.3}, WEIGHTS3], ids=["2", "3"])
def test_loader_shares_within_a_point_over_any_million_tokens(large_sources, tmp_path, weights):
    big = {"data.batch_size": 64, "data.sequence_length": 128, "data.num_workers": 2,
           "model.max_position_embeddings": 128}  # fmt: skip
    loader = _loader(large_sources, weights, tmp_path, **big)
    try:
        batches = _take(loader, 170)  # 1.2M target tokens, passes' padding left out
    finally:
        loader.close()
    counts = np.array([b.source_tokens for b in batches], dtype=float)
    assert counts.sum() == sum(b.tokens for b in batches)  # every target token is a source's
    _assert_windows(counts, list(weights.values()), 1_000_000)


@pytest.mark.parametrize("workers", [pytest.param(0, marks=pytest.mark.slow), 2])
def test_resume_is_exact_twice_with_workers(sources, tmp_path, workers):
    kw = {"data.num_workers": workers}
    ref = _loader(sources, WEIGHTS3, tmp_path, **kw)
    try:
        want = _take(ref, 60)
    finally:
        ref.close()
    got, state = [], None
    for stop in (17, 41, 60):  # stopped twice, resumed twice
        loader = _loader(sources, WEIGHTS3, tmp_path, **kw)
        if state is not None:
            loader.load_state_dict(copy.deepcopy(state))
        try:
            it = iter(loader)
            while len(got) < stop:
                got.append(next(it))
            state = loader.state_dict()
        finally:
            loader.close()
    for a, b in zip(got, want, strict=True):
        assert torch.equal(a.inputs, b.inputs) and torch.equal(a.targets, b.targets)
        assert a.source_tokens == b.source_tokens and a.epoch == b.epoch
    assert state["version"] == 4 and set(state["source"]["sources"]) == {"a", "b", "c"}


def test_small_source_restarts_as_its_own_epoch_and_the_primary_sets_the_epoch(sources, tmp_path):
    loader = _loader(sources, {"b": 0.2, "a": 0.8}, tmp_path)
    try:
        batches = _take(loader, 200)
    finally:
        loader.close()
    last = batches[-1].source_epochs  # order b, a: b (150 docs, small share) vs a (600 docs)
    assert last[1] >= 1, last  # the primary (a, 0.8) rolled over at least once
    assert [b.epoch for b in batches] == [b.source_epochs[1] for b in batches]
    assert sorted({b.epoch for b in batches}) == list(range(last[1] + 1))


def test_weight_change_on_resume_continues_every_source(sources, tmp_path):
    tok = load_tokenizer(str(sources[0] / "tok" / "tokenizer.json"))
    loader = _loader(sources, WEIGHTS3, tmp_path)
    try:
        before = _take(loader, 30)
        state = loader.state_dict()
        after_same = _take(loader, 30)
    finally:
        loader.close()
    seen = [d for b in before for d in _docs(tok, b)]
    new_weights = {"a": 0.2, "b": 0.3, "c": 0.5}
    changed = _loader(sources, new_weights, tmp_path)
    changed.load_state_dict(copy.deepcopy(state))
    try:
        after = _take(changed, 1)
        state2 = changed.state_dict()  # mid-document, right after the changed-mix resume
        after += _take(changed, 29)
        end = _positions(changed.state_dict())
    finally:
        changed.close()
    again = _loader(sources, new_weights, tmp_path)  # a second resume, at the new weights
    again.load_state_dict(copy.deepcopy(state2))
    try:
        assert all(
            torch.equal(x.inputs, y.inputs)
            for x, y in zip(_take(again, 29), after[1:], strict=True)
        )
        assert _positions(again.state_dict()) == end  # the mixer's counts too
    finally:
        again.close()
    # The first batch after resume starts where the run stopped, whatever the weights.
    assert torch.equal(after[0].inputs[0, :8], after_same[0].inputs[0, :8])
    resumed = [d for b in after for d in _docs(tok, b)]
    for letter in "abc":
        old = [d for d in seen if d[0] == letter]
        new = [d for d in resumed if d[0] == letter]
        assert not (set(new) - {old[-1]}) & set(old), letter  # nothing repeated: positions kept
    share = np.sum([b.source_tokens for b in after[2:]], axis=0)
    assert share[2] / share.sum() > 0.4  # c's new weight (0.5) applies
    # one source dropped and one re-weighted: a and c continue
    fewer = _loader(sources, {"a": 0.5, "c": 0.5}, tmp_path)
    fewer.load_state_dict(copy.deepcopy(state))
    try:
        rest = [d for b in _take(fewer, 10) for d in _docs(tok, b)]
    finally:
        fewer.close()
    assert {d[0] for d in rest} <= {"a", "c"} and not (set(rest[1:]) & set(seen))


def test_changed_source_settings_are_refused(sources, tmp_path):
    loader = _loader(sources, WEIGHTS3, tmp_path)
    try:
        _take(loader, 3)
        state = loader.state_dict()
    finally:
        loader.close()
    root, paths = sources
    other = {**paths, "b": paths["b"][:2]}  # source b lost a file
    cfg = parse_training_config(mixture_config(root, other, WEIGHTS3), root)
    changed = build_train_loader(cfg, load_tokenizer(cfg.tokenizer.tokenizer_json), tmp_path)
    with pytest.raises(CheckpointError, match="training source b: train"):
        changed.load_state_dict(state)


def test_one_source_checkpoint_resumes_into_a_mixture(sources, tmp_path):
    root, paths = sources
    from tests.support.training import tiny_training_config

    one = tiny_training_config(root, 4, **{"data.train_shards": paths["a"]})
    cfg = parse_training_config(one, root)
    tok = load_tokenizer(cfg.tokenizer.tokenizer_json)
    single = build_train_loader(cfg, tok, tmp_path)
    try:
        first = _take(single, 12)
        state = single.state_dict()
        following = _take(single, 1)[0]
    finally:
        single.close()
    mixed = _loader(sources, {"a": 0.5, "b": 0.5}, tmp_path)
    mixed.load_state_dict(copy.deepcopy(state))
    try:
        after = _take(mixed, 10)
    finally:
        mixed.close()
    # a continues exactly where it stopped (the next batch begins with the same tokens)
    assert torch.equal(after[0].inputs[0, :16], following.inputs[0, :16])
    seen = {d for b in first for d in _docs(tok, b)}
    resumed = [d for b in after for d in _docs(tok, b)]
    assert {d[0] for d in resumed} == {"a", "b"}
    assert not set(resumed[1:]) & seen


def test_each_source_has_its_own_validation_set(sources, tmp_path):
    root, paths = sources
    cfg_dict = mixture_config(root, paths, {"a": 0.5, "b": 0.5})
    # b validates on its own files (c's documents here), a on a holdout of its first documents
    cfg_dict["data"]["mixture"][1]["validation_shards"] = paths["c"]
    cfg = parse_training_config(cfg_dict, root)
    tok = load_tokenizer(cfg.tokenizer.tokenizer_json)
    val = build_validation_batches(cfg, tok, tmp_path)
    by_source = {name: [d for b in val if b.source == name for d in _docs(tok, b)]
                 for name in ("a", "b")}  # fmt: skip
    assert by_source["a"] and {d[0] for d in by_source["a"]} == {"a"}
    assert by_source["b"] and {d[0] for d in by_source["b"]} == {"c"}
    loader = build_train_loader(cfg, tok, tmp_path)
    try:
        trained = {d for b in _take(loader, 40) for d in _docs(tok, b)}
    finally:
        loader.close()
    assert not trained & set(by_source["a"][1:])  # a's holdout is never trained on


def test_version_3_mixture_state_is_refused_in_one_line(sources, tmp_path):
    """A version-3 mixture state ran its epochs per worker (another data order): refused in
    one line, not resumed inexactly. Version-3 one-source states still resume
    (test_mixture_resume.py)."""
    loader = _loader(sources, WEIGHTS3, tmp_path, **{"data.num_workers": 2})
    try:
        _take(loader, 3)
        state = loader.state_dict()
    finally:
        loader.close()
    old = {k: v for k, v in state.items() if k != "carry"} | {"version": 3}
    fresh = _loader(sources, WEIGHTS3, tmp_path, **{"data.num_workers": 2})
    with pytest.raises(CheckpointError) as err:
        fresh.load_state_dict(old)
    message = str(err.value)
    assert len(message.splitlines()) == 1 and "(version 3) is a mixture's" in message
    assert "without --resume" in message
