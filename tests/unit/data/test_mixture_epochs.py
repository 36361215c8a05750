"""A mixture's epochs with several data workers and ranks, traced document by document.

An epoch of a mixture is one pass over its primary (largest-weight) source, for any worker and
rank count: every primary document of the pass once, the other sources flowing at their
weights inside it. Each document starts with its source's letter and number (``b0042``,
tests/support/mixture.py); the rank loaders are driven in lockstep as the training loop drives
them (tests/support/doc_trace.drive) and every worker's token stream of a pass is decoded back
to documents. Uneven files; 0, 2, 4 and 8 workers; 1 and 2 ranks.
"""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from tests.support.doc_trace import drive, roundtrip
from tests.support.mixture import mixture_config, source_texts

from lmstream.config import parse_training_config
from lmstream.data.loader import build_train_loader
from lmstream.tokenizer import load_tokenizer, save_tokenizer, train_bpe

# b (long documents) is the primary; a (short) rolls over several times per epoch, c (medium)
# about once. Files of uneven sizes, documents numbered across each source's files.
FILES = {"b": [7, 61, 22], "a": [40, 160], "c": [30, 50]}
WEIGHTS = {"b": 0.6, "a": 0.25, "c": 0.15}
HOLDOUT = 4  # data.validation_documents: each source's first documents
_ID = re.compile(r"^([abc]\d{4}) ")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, dict[str, list[str]]]:
    root = tmp_path_factory.mktemp("mixepochs")
    paths, everything = {}, []
    for letter, sizes in FILES.items():
        texts = source_texts(letter, sum(sizes))
        everything += texts
        (root / letter).mkdir()
        paths[letter], start = [], 0
        for k, n in enumerate(sizes):
            path = root / letter / f"part-{k}.jsonl"
            path.write_text(
                "".join(json.dumps({"text": t}) + "\n" for t in texts[start : start + n])
            )
            paths[letter].append(str(path))
            start += n
    save_tokenizer(train_bpe(everything, 300, ["<|endoftext|>", "<|pad|>"]), root / "tok")
    return root, paths


def _loaders(corpus, tmp_path: Path, world: int, workers: int, **overrides) -> list:
    root, paths = corpus
    cfg = parse_training_config(mixture_config(root, paths, WEIGHTS, **{
        "data.num_workers": workers, "data.validation_documents": HOLDOUT, **overrides,
    }), root)  # fmt: skip
    tok = load_tokenizer(cfg.tokenizer.tokenizer_json)
    run = tmp_path / "run"
    run.mkdir(exist_ok=True)
    return [
        build_train_loader(cfg, tok, run, rank=r, world_size=world, sync_passes=True)
        for r in range(world)
    ]


def _close(loaders: list) -> None:
    for loader in loaders:
        loader.close()


def _documents(records: list[tuple], tok) -> dict[int, list[tuple[str, int]]]:
    """{epoch: [(document id, its tokens with its <|endoftext|>)]} from ``drive``'s records:
    each worker's stream of a pass, split at <|endoftext|> (a worker's pass ends at a
    document's end)."""
    eot = tok.token_to_id("<|endoftext|>")
    streams: dict[tuple, list[np.ndarray]] = defaultdict(list)
    for epoch, rank, worker, tokens, weight in records:
        if weight > 0:
            streams[(epoch, rank, worker)].append(tokens)
    out: dict[int, list] = defaultdict(list)
    for (epoch, _rank, _worker), parts in streams.items():
        tokens = np.concatenate(parts)
        if tokens[-1] != eot:  # the pass's last <|endoftext|> fell alone in a row
            tokens = np.append(tokens, eot)
        cuts = np.flatnonzero(tokens == eot)
        for piece in np.split(tokens[: cuts[-1]], cuts[:-1] + 1):
            text = tok.decode([int(t) for t in piece if t != eot])
            match = _ID.match(text)
            assert match, f"not a whole document: {text[:40]!r}"
            out[epoch].append((match.group(1), len(piece) + (piece[-1] != eot)))
    return dict(out)


def _primary_ids() -> Counter:
    """The primary's documents of a pass: all of b's but its holdout."""
    return Counter(f"b{i:04d}" for i in range(HOLDOUT, sum(FILES["b"])))


def _shares(docs: list[tuple[str, int]]) -> dict[str, float]:
    tokens = Counter()
    for doc, n in docs:
        tokens[doc[0]] += n
    total = sum(tokens.values())
    return {k: tokens[k] / total for k in WEIGHTS}


CASES = [  # (ranks, workers per rank)
    (1, 0), (1, 2), pytest.param(1, 4, marks=pytest.mark.slow),
    pytest.param(1, 8, marks=pytest.mark.slow), (2, 0),
    pytest.param(2, 2, marks=pytest.mark.slow), pytest.param(2, 4, marks=pytest.mark.slow),
]  # fmt: skip


@pytest.mark.parametrize(("world", "workers"), CASES)
def test_each_epoch_trains_every_primary_document_once(corpus, tmp_path, world, workers):
    loaders = _loaders(corpus, tmp_path, world, workers)
    try:
        records, _ = drive(loaders, epochs=2, accum=2)
    finally:
        _close(loaders)
    tok = load_tokenizer(str(corpus[0] / "tok" / "tokenizer.json"))
    docs = _documents(records, tok)
    for epoch in (0, 1):
        got = Counter(d for d, _ in docs[epoch] if d[0] == "b")
        assert got == _primary_ids(), f"epoch {epoch}"
        shares = _shares(docs[epoch])
        for k, w in WEIGHTS.items():  # the others flow at their weights inside the epoch
            assert abs(shares[k] - w) < 0.01, (epoch, shares)
        # a secondary's holdout is never trained, its documents are its own
        assert not {d for d, _ in docs[epoch]} & {
            f"{k}{i:04d}" for k in "ac" for i in range(HOLDOUT)
        }


@pytest.mark.slow
def test_resume_anywhere_in_a_pass_and_its_idle_tail_is_exact(corpus, tmp_path):
    """2 ranks x 2 workers: stopped mid-pass, while one rank idles waiting for the other, right
    at an epoch's end and just after it, each resume in fresh loaders from a state that went
    through torch.save: the uninterrupted run's batches, token for token."""
    full_loaders = _loaders(corpus, tmp_path, 2, 2)
    try:
        full, _ = drive(full_loaders, epochs=2)
    finally:
        _close(full_loaders)
    steps = [full[i : i + 2] for i in range(0, len(full), 2)]
    tail = next(i for i, s in enumerate(steps) if {r[4] for r in s} == {0.0, 1.0})
    end = next(i for i, s in enumerate(steps) if {r[4] for r in s} == {0.0})
    cuts = sorted({5, tail + 1, end, end + 1, end + 2})  # steps after which the run stops
    got, states, epoch, done = [], None, 0, 0
    for stop in [*cuts, None]:
        loaders = _loaders(corpus, tmp_path, 2, 2)
        try:
            for loader, state in zip(loaders, states or [None, None], strict=True):
                if state is not None:
                    loader.load_state_dict(state)
            part, epoch = drive(
                loaders, epochs=2, start_epoch=epoch,
                max_steps=None if stop is None else stop - done,
            )  # fmt: skip
            states = [roundtrip(loader.state_dict()) for loader in loaders]
        finally:
            _close(loaders)
        got += part
        done = stop or 0
    assert len(got) == len(full)
    for a, b in zip(got, full, strict=True):
        assert a[:3] == b[:3] and a[4] == b[4] and (a[3] == b[3]).all()


def test_the_startup_line_counts_epochs_of_the_primary_at_its_share(corpus, tmp_path):
    """The line `lmstream train` starts with names the primary's files and tokens, so the
    epochs it derives from the planned tokens are the primary's: only its weight's share of
    those tokens are its documents (before, all of them were, 1/0.6 times too many epochs)."""
    from lmstream.train.report import describe_data, survey_data

    root, paths = corpus
    cfg = parse_training_config(mixture_config(root, paths, WEIGHTS, **{
        "data.validation_documents": HOLDOUT}), root)  # fmt: skip
    survey = survey_data(cfg, tmp_path, load_tokenizer(cfg.tokenizer.tokenizer_json))
    available = (survey.documents - HOLDOUT) * survey.tokens_per_document
    steps = 200
    line = describe_data(cfg, survey, steps)
    epochs = float(re.search(r"= ([\d.,]+) epochs", line).group(1))
    assert epochs == pytest.approx(
        steps * cfg.tokens_per_step(1) * WEIGHTS["b"] / available, abs=0.01
    )


def test_the_startup_line_of_a_run_by_epochs_says_its_epochs(corpus, tmp_path):
    """A run by scheduler.total_epochs makes exactly that many passes: its start-up line says
    so, rather than an epochs figure derived from the sampled tokens per document (before:
    "= 3.58 epochs (4 passes over the data, the last one partial)" for a 3-epoch run)."""
    from lmstream.train.report import describe_data, survey_data

    root, paths = corpus
    cfg = parse_training_config(mixture_config(root, paths, WEIGHTS, **{
        "data.validation_documents": HOLDOUT, "scheduler.total_steps": None,
        "scheduler.total_epochs": 3}), root)  # fmt: skip
    survey = survey_data(cfg, tmp_path, load_tokenizer(cfg.tokenizer.tokenizer_json))
    line = describe_data(cfg, survey, 200)
    assert line.endswith("= 3 epochs (scheduler.total_epochs)"), line
    assert "passes over" not in line and line.count(" epochs") == 1, line


def test_a_resume_at_an_epochs_start_that_makes_another_source_primary_passes_over_it(
    corpus, tmp_path
):
    """Resumed exactly at epoch 1's start with weights that make a the primary (an annealing
    step): epoch 1 is one pass over a, each of its documents once. Before, a continued where
    it was whenever its own epoch count, as a secondary, happened to equal the pass's number:
    that epoch trained 36 of a's 196 documents."""
    loaders = _loaders(corpus, tmp_path, 1, 2)
    try:
        _, epoch = drive(loaders, epochs=1)
        states = [roundtrip(loader.state_dict()) for loader in loaders]
    finally:
        _close(loaders)
    paths = corpus[1]
    weights = {"b": 0.2, "a": 0.6, "c": 0.2}
    mixture = [{"name": k, "weight": w, "train_shards": paths[k]} for k, w in weights.items()]
    loaders = _loaders(corpus, tmp_path, 1, 2, **{"data.mixture": mixture})
    try:
        for loader, state in zip(loaders, states, strict=True):
            loader.load_state_dict(state)
        records, _ = drive(loaders, epochs=2, start_epoch=epoch)
    finally:
        _close(loaders)
    docs = _documents(records, load_tokenizer(str(corpus[0] / "tok" / "tokenizer.json")))
    got = Counter(d for d, _ in docs[1] if d[0] == "a")
    assert got == Counter(f"a{i:04d}" for i in range(HOLDOUT, sum(FILES["a"])))
