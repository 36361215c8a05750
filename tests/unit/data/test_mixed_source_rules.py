"""A mixture's sources keep the single source's data rules (issues #19 and #20), traced
document by document.

Two streamed sources (streaming_config.json version 2), each of two uneven jsonl files with bad
records, over-long documents and documents quoting ``<|endoftext|>`` / ``<|pad|>``, read by 2
data workers. Source a's documents are ``doc-00000...``, b's ``doc-10000...``; the loader's
token rows are decoded back to ids (tests/support/doc_trace.py's method, per worker stream).
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from tests.reliability.support import tree
from tests.support.doc_trace import docs, ids_of, real_tokens, record_tokenizer_input
from tests.support.training import DELETE, tiny_training_config, train_in_process, write_run
from tokenizers import Tokenizer

from lmstream.cli import main as cli_main
from lmstream.config import StreamingConfig, dump_streaming_config, parse_training_config
from lmstream.config_sources import StreamSourceConfig
from lmstream.data.loader import build_train_loader
from lmstream.data.mixture_plan import resolve_sources
from lmstream.data.validation import load_validation_set
from lmstream.errors import CheckpointError
from lmstream.tokenizer import train_bpe
from lmstream.train import checkpoint as ckpt

SPECIAL = " <|endoftext|> quoted <|pad|>"
B = 10_000  # source b's first document id
_ID = re.compile(r"doc-(\d{5}) ")


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return train_bpe(docs(300) + docs(300, start=B), 400, ["<|endoftext|>", "<|pad|>"])


def messy_source(folder: Path, start: int, sizes: tuple[int, int]) -> tuple[list[str], list[int]]:
    """Two uneven jsonl files: a bad record in place of every 17th document, an over-long one
    (over max_chars 300) in place of every 23rd, special-token text quoted in every 7th; returns
    (files, ids of the clean documents in source order)."""
    folder.mkdir(parents=True, exist_ok=True)
    texts = docs(sum(sizes), start=start)
    clean, files = [], []
    for k, part in enumerate((texts[: sizes[0]], texts[sizes[0] :])):
        lines = []
        for text in part:
            i = int(_ID.match(text).group(1))
            if i % 17 == 3:
                lines.append('{"text": 5}')
            elif i % 23 == 5:
                lines.append(json.dumps({"text": f"doc-{i:05d} " + "sea " * 120}))
            else:
                lines.append(json.dumps({"text": text + (SPECIAL if i % 7 == 2 else "")}))
                clean.append(i)
        path = folder / f"part-{k}.jsonl"
        path.write_text("\n".join(lines) + "\n")
        files.append(str(path))
    return files, clean


def write_mixture(run: Path, root: Path, max_chars: int = 300, **changes) -> dict[str, list[int]]:
    """streaming_config.json version 2 of sources a and b in RUN (max_samples 70 and 30);
    their clean ids. ``changes``: source settings, e.g. ``b__max_samples=20``."""
    (fa, ca), (fb, cb) = (
        messy_source(root / "a", 0, (9, 111)),
        messy_source(root / "b", B, (12, 45)),
    )
    sources = [
        StreamSourceConfig(name="a", dataset=fa[0], data_files=fa, max_samples=70),
        StreamSourceConfig(name="b", dataset=fb[0], data_files=fb, max_samples=30),
    ]
    for key, value in changes.items():
        name, field = key.split("__")
        setattr(sources["ab".index(name)], field, value)
    run.mkdir(parents=True, exist_ok=True)
    dump_streaming_config(
        StreamingConfig(version=2, sources=sources, max_chars=max_chars),
        run / "streaming_config.json",
    )
    return {"a": ca, "b": cb}


def training_config(run: Path, tokenizer: Tokenizer, workers: int):
    tokenizer.save(str(run / "tokenizer.json"))
    return parse_training_config(
        {
            "model": {"hidden_size": 8, "intermediate_size": 8, "num_layers": 1,
                      "num_attention_heads": 2},
            "tokenizer": {"tokenizer_json": str(run / "tokenizer.json")},
            "data": {"batch_size": 4, "sequence_length": 32, "shuffle_buffer_size": 16,
                     "num_workers": workers, "validation_documents": 5},
            "optimizer": {"learning_rate": 1e-3},
            "scheduler": {"total_steps": 10},
        },
        run,
    )  # fmt: skip


def held_out(cfg, tokenizer, run: Path) -> dict[str, list[int]]:
    return {
        s.name: ids_of(load_validation_set(cfg, tokenizer, run, s.plan).tokens, tokenizer)
        for s in resolve_sources(cfg, run)
    }


def trained(cfg, tokenizer, run: Path, batches: int, world: int = 1) -> tuple[list, np.ndarray]:
    """(ids of every whole document in each rank's first ``batches`` batches, all tokens)."""
    streams: dict[tuple, list[np.ndarray]] = defaultdict(list)
    for rank in range(world):
        loader = build_train_loader(cfg, tokenizer, run, rank=rank, world_size=world)
        try:
            it = iter(loader)
            for _ in range(batches):
                batch = next(it)
                streams[(rank, loader.last_worker)].append(real_tokens(batch))
        finally:
            loader.close()
    eot = tokenizer.token_to_id("<|endoftext|>")
    ids = []
    for parts in streams.values():
        tokens = np.concatenate(parts)
        cut = np.flatnonzero(tokens == eot)[-1]  # the worker's last whole document ends there
        ids += ids_of(tokens[: cut + 1], tokenizer)
    return ids, np.concatenate([t for parts in streams.values() for t in parts])


@pytest.mark.parametrize(("world", "workers"), [(1, 0), (1, 2), (2, 2)])
def test_each_source_trains_its_max_samples_prefix_without_its_holdout(
    tmp_path, tokenizer, world, workers
):
    clean = write_mixture(tmp_path / "run", tmp_path / "data")
    run = tmp_path / "run"
    cfg = training_config(run, tokenizer, workers)
    assert held_out(cfg, tokenizer, run) == {"a": clean["a"][:5], "b": clean["b"][:5]}
    ids, tokens = trained(cfg, tokenizer, run, 120 // world, world)
    assert {i for i in ids if i < B} == set(clean["a"][5:70])
    assert {i for i in ids if i >= B} == set(clean["b"][5:30])
    # special-token text stayed text: every <|endoftext|> is a document boundary (ids_of
    # would have met a piece that is no whole document) and no <|pad|> was trained or held out
    pad = tokenizer.token_to_id("<|pad|>")
    assert pad not in set(tokens.tolist())
    for source in resolve_sources(cfg, run):
        assert pad not in set(load_validation_set(cfg, tokenizer, run, source.plan).tokens.tolist())


def test_orchestrate_and_training_see_the_same_documents_of_each_source(
    tmp_path, monkeypatch
) -> None:
    """A --sources mixture with --max-chars: each source's tokenizer documents are a prefix of
    its clean documents (bad and too-long records skipped), and its holdout plus one pass of
    training are exactly its first max_samples clean documents."""
    import lmstream.orchestrate as orch

    clean = write_mixture(tmp_path / "scratch", tmp_path / "data")
    listing = tmp_path / "mix.yaml"
    listing.write_text(
        f"- {{name: a, dataset: '{tmp_path / 'data' / 'a' / '*.jsonl'}', max_samples: 70}}\n"
        f"- {{name: b, dataset: '{tmp_path / 'data' / 'b' / '*.jsonl'}', max_samples: 30}}\n"
    )
    seen = record_tokenizer_input(monkeypatch)
    result = orch.orchestrate(
        orch.OrchestrateOptions(
            experiment="mix", workspace=str(tmp_path / "ws"), stream=True, sources=str(listing),
            max_chars=300, vocab_size=400, model_size="tiny", progress=False,
        )
    )  # fmt: skip
    sampled = [int(_ID.match(t).group(1)) for t in seen]
    by_source = {"a": [i for i in sampled if i < B], "b": [i for i in sampled if i >= B]}
    passes: dict[str, list[list[int]]] = {}
    for name, ids in by_source.items():  # a source read again starts at its first document
        for i in ids:
            if i == clean[name][0] or not passes.get(name):
                passes.setdefault(name, []).append([])
            passes[name][-1].append(i)
        for one in passes[name]:
            assert one == clean[name][: len(one)], f"{name}: not a prefix of its clean documents"
    # b (30 documents) ended its pass first and was read again, the same 30 each time; the sample
    # ended with a's one pass, its first 70 clean documents
    assert len(passes["b"]) > 1 and all(p == clean["b"][:30] for p in passes["b"][:-1])
    assert passes["a"] == [clean["a"][:70]]
    quoting = sum(SPECIAL in t for t in seen)
    assert quoting and result.special_text == quoting

    run = result.paths.run_dir
    tok = Tokenizer.from_file(str(result.paths.tokenizer_json))
    cfg = training_config(run, tok, workers=2)  # orchestrate's run folder, the test's model
    k = cfg.data.validation_documents
    assert held_out(cfg, tok, run) == {"a": clean["a"][:k], "b": clean["b"][:k]}
    ids, _ = trained(cfg, tok, run, 120)
    assert {i for i in ids if i < B} == set(clean["a"][k:70])
    assert {i for i in ids if i >= B} == set(clean["b"][k:30])


def _state_after(cfg, tokenizer, run: Path, batches: int = 3) -> dict:
    loader = build_train_loader(cfg, tokenizer, run)
    try:
        it = iter(loader)
        for _ in range(batches):
            next(it)
        return loader.state_dict()
    finally:
        loader.close()


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"b__max_samples": 20}, "max_samples 30 -> 20"),
        ({"max_chars": 250}, "max_chars 300 -> 250"),
        ({"a__data_files": "OTHER"}, "data_files"),
    ],
    ids=["max_samples", "max_chars", "dataset"],
)
def test_resume_with_a_changed_source_setting_is_refused(tmp_path, tokenizer, change, named):
    run = tmp_path / "run"
    write_mixture(run, tmp_path / "data")
    cfg = training_config(run, tokenizer, workers=2)
    state = _state_after(cfg, tokenizer, run)
    if change.get("a__data_files") == "OTHER":
        other, _ = messy_source(tmp_path / "other", 0, (60, 60))
        change = {"a__data_files": other, "a__dataset": other[0]}
    write_mixture(run, tmp_path / "data", **change)
    loader = build_train_loader(training_config(run, tokenizer, workers=2), tokenizer, run)
    try:
        with pytest.raises(CheckpointError) as err:
            loader.load_state_dict(state)
    finally:
        loader.close()
    message = str(err.value)
    assert len(message.splitlines()) == 1 and named in message, message


def test_validation_cache_of_a_source_keys_by_its_content(tmp_path, tokenizer) -> None:
    """A source's file edited in place (same path) is read again, not served from the cache."""
    run = tmp_path / "run"
    clean = write_mixture(run, tmp_path / "data")
    cfg = training_config(run, tokenizer, workers=0)
    assert held_out(cfg, tokenizer, run)["b"] == clean["b"][:5]
    first = Path(tmp_path / "data" / "b" / "part-0.jsonl")
    lines = first.read_text().splitlines()
    first.write_text("\n".join([lines[1], lines[0], *lines[2:]]) + "\n")
    assert held_out(cfg, tokenizer, run)["b"] == [clean["b"][1], clean["b"][0], *clean["b"][2:5]]


def _one_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if not line.startswith("#")]
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.slow
def test_mixture_checkpoint_readers_verify_and_resume_checks_the_sources(
    tmp_path, tokenizer, capsys
) -> None:
    """The real CLI on a streamed mixture (2 workers): --resume refuses a source whose
    max_samples changed, and eval, generate and export refuse a checkpoint whose weights no
    longer match their sha256, each in one line, exit 4, nothing written."""
    run = tmp_path / "run"
    write_mixture(run, tmp_path / "data")
    tokenizer.save(str(run / "tokenizer.json"))
    cfg = tiny_training_config(tmp_path, 4, **{
        "tokenizer.tokenizer_json": str(run / "tokenizer.json"),
        "data.train_shards": DELETE, "data.num_workers": 2, "data.validation_documents": 5,
    })  # fmt: skip
    assert train_in_process(write_run(run, cfg)) == 0
    write_mixture(run, tmp_path / "data", b__max_samples=20)
    cfg["scheduler"]["total_steps"] = 6
    config = write_run(run, cfg)
    before = tree(run)
    capsys.readouterr()
    assert train_in_process(config, "--resume") == 4
    line = _one_line(capsys.readouterr().err)
    assert "the data source changed (source b max_samples: 30 -> 20" in line, line
    assert tree(run) == before

    newest = ckpt.list_checkpoints(run / "checkpoints")[-1]
    with open(newest / ckpt.MODEL_FILE, "r+b") as f:
        f.seek(16 * 1024)
        f.write(bytes(4096))  # zeros: finite weights, other values
    for command in (
        ["eval", "--max-batches", "1"],
        ["generate", "--prompt", "doc", "--max-new-tokens", "2"],
        ["export", "--out", str(tmp_path / "hf")],
    ):
        assert cli_main([command[0], "--checkpoint", str(newest), *command[1:]]) == 4, command
        assert "fails its sha256 check" in _one_line(capsys.readouterr().err), command
    assert not (tmp_path / "hf").exists()
