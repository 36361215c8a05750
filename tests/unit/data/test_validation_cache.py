"""The tokenized validation set's cache is keyed by content too (issue #19, item 12): a
validation file edited in place (same path) must not be served from the stale cache, nor a
remote source whose content changed behind the same URL, dataset id or moving revision."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tests.support.http_server import FileServer
from tests.support.hub_server import HubStandIn

from lmstream.config import parse_training_config
from lmstream.data import validation
from lmstream.data.documents import document_hash, files_plan
from lmstream.data.remote_identity import remote_identity
from lmstream.data.sources import SourceSpec
from lmstream.data.validation import load_validation_set
from lmstream.tokenizer import train_bpe


def _write(path: Path, word: str) -> Path:
    path.write_text("".join(json.dumps({"text": f"{word} {i} {word}"}) + "\n" for i in range(30)))
    return path


def test_validation_file_edited_in_place_is_read_again(tmp_path):
    texts = [f"alpha beta {i} gamma delta" for i in range(50)]
    tok = train_bpe(texts, 300, ["<|endoftext|>", "<|pad|>"])
    tok.save(str(tmp_path / "tokenizer.json"))
    train = _write(tmp_path / "train.jsonl", "alpha")
    val = _write(tmp_path / "val.jsonl", "beta")
    cfg = parse_training_config(
        {
            "model": {"hidden_size": 8, "intermediate_size": 8, "num_layers": 1,
                      "num_attention_heads": 2},
            "tokenizer": {"tokenizer_json": str(tmp_path / "tokenizer.json")},
            "data": {"train_shards": [str(train)], "validation_shards": [str(val)],
                     "batch_size": 2, "sequence_length": 8, "validation_documents": 10},
            "optimizer": {"learning_rate": 1e-3},
            "scheduler": {"total_steps": 10},
        },
        tmp_path,
    )  # fmt: skip
    before = load_validation_set(cfg, tok, tmp_path).tokens
    _write(val, "gamma")  # same path, other documents
    after = load_validation_set(cfg, tok, tmp_path).tokens
    assert "gamma" in tok.decode(after.tolist()) and "beta" not in tok.decode(after.tolist())
    assert "beta" in tok.decode(before.tolist())


# ---- remote sources: the cache follows what the source holds now, not only its name


def _lines(word: str, n: int = 30) -> bytes:
    return "".join(json.dumps({"text": f"{word} {i} {word}"}) + "\n" for i in range(n)).encode()


def _remote_setup(tmp_path: Path) -> tuple:
    """A tokenizer and a config whose validation set is a holdout of 10 documents; the plan is
    given to load_validation_set, so train_shards only has to parse."""
    tok = train_bpe([f"alpha beta {i} gamma delta" for i in range(50)], 300,
                    ["<|endoftext|>", "<|pad|>"])  # fmt: skip
    tok.save(str(tmp_path / "tokenizer.json"))
    raw = {
        "model": {"hidden_size": 8, "intermediate_size": 8, "num_layers": 1,
                  "num_attention_heads": 2},
        "tokenizer": {"tokenizer_json": str(tmp_path / "tokenizer.json")},
        "data": {"train_shards": [str(tmp_path / "unused.jsonl")], "batch_size": 2,
                 "sequence_length": 8, "validation_documents": 10,
                 "cache_dir": str(tmp_path / "cache")},
        "optimizer": {"learning_rate": 1e-3},
        "scheduler": {"total_steps": 10},
    }  # fmt: skip
    return tok, raw, parse_training_config(raw, tmp_path)


def _text(tok, held_out) -> str:
    return tok.decode(held_out.tokens.tolist())


def _as_a_new_run() -> None:
    """What a new process starts with: no memory of the entries this one built or announced
    (a run loads its set twice, for the loader and for evaluation, and says the line once)."""
    validation._KNOWN_ENTRIES.clear()


def test_http_source_changed_behind_its_url_is_read_again(tmp_path):
    tok, _, cfg = _remote_setup(tmp_path)
    files = {"docs.jsonl": _lines("beta")}
    with FileServer(files) as server:
        plan = files_plan([server.url("docs.jsonl")], [], None)
        before = load_validation_set(cfg, tok, tmp_path, plan)
        files["docs.jsonl"] = _lines("gamma")  # same URL, new content (and ETag)
        after = load_validation_set(cfg, tok, tmp_path, plan)
    assert "beta" in _text(tok, before) and "gamma" not in _text(tok, before)
    assert "gamma" in _text(tok, after) and "beta" not in _text(tok, after)
    assert after.hashes == {document_hash(f"gamma {i} gamma") for i in range(10)}


def test_unchanged_http_source_is_served_from_the_cache(tmp_path):
    tok, _, cfg = _remote_setup(tmp_path)
    with FileServer({"docs.jsonl": _lines("beta")}) as server:
        plan = files_plan([server.url("docs.jsonl")], [], None)
        first = load_validation_set(cfg, tok, tmp_path, plan)
        reads = len(server.requests)
        again = load_validation_set(cfg, tok, tmp_path, plan)
        asked = [method for method, *_ in server.requests[reads:]]
    assert reads > 0 and asked == ["HEAD"]  # the check only: the file is not read again
    assert np.array_equal(first.tokens, again.tokens) and first.hashes == again.hashes


def test_http_source_that_refuses_the_check_uses_the_cache_and_says_so(tmp_path, caplog):
    tok, _, cfg = _remote_setup(tmp_path)
    files = {"docs.jsonl": _lines("beta")}
    with FileServer(files) as server:
        url = server.url("docs.jsonl")
        first = load_validation_set(cfg, tok, tmp_path, files_plan([url], [], None))
        del files["docs.jsonl"]  # the server answers 404: the run goes on with the cache
        _as_a_new_run()
        with caplog.at_level(logging.WARNING, logger="lmstream.data.validation"):
            again = load_validation_set(cfg, tok, tmp_path, files_plan([url], [], None))
            load_validation_set(cfg, tok, tmp_path, files_plan([url], [], None))  # said once
    assert np.array_equal(first.tokens, again.tokens)
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and said[0].startswith(
        f"validation: could not check whether {url} changed since the cached validation set ("
    ), said
    assert "using the cache validation-" in said[0]


def test_http_source_without_etag_is_unchecked_and_says_so(tmp_path, caplog):
    tok, _, cfg = _remote_setup(tmp_path)
    with FileServer({"docs.jsonl": _lines("beta")}, etag=False) as server:
        plan = files_plan([server.url("docs.jsonl")], [], None)
        with caplog.at_level(logging.WARNING, logger="lmstream.data.validation"):
            load_validation_set(cfg, tok, tmp_path, plan)  # nothing cached: read, said nothing
            load_validation_set(cfg, tok, tmp_path, plan)  # built by this run: nothing to say
            assert not caplog.records
            _as_a_new_run()
            load_validation_set(cfg, tok, tmp_path, plan)
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and "(the server sends no ETag or Last-Modified); using" in said[0]
    assert [p.name.endswith("-unchecked.npz") for p in (tmp_path / "cache").rglob("*.npz")] == [
        True
    ]


_HUB_LOAD = """
import json, sys
from pathlib import Path
from tokenizers import Tokenizer
from lmstream.config import parse_training_config
from lmstream.data.documents import DataPlan
from lmstream.data.sources import SourceSpec
from lmstream.data import validation
from lmstream.data.validation import load_validation_set
root = Path(sys.argv[1])
cfg = parse_training_config(json.loads((root / "cfg.json").read_text()), root)
tok = Tokenizer.from_file(str(root / "tokenizer.json"))
spec = SourceSpec("acme/docs", revision="main", cache_dir=str(root / "hf-cache"))
plan = DataPlan("text", spec, identity={"dataset": "acme/docs", "revision": "main"})
print(tok.decode(load_validation_set(cfg, tok, root, plan).tokens.tolist()))
"""


@pytest.mark.slow
def test_hub_dataset_at_a_moving_revision_is_read_again_once_it_moves(tmp_path):
    """The Hub stand-in's commit follows its files, as `main` does on the Hub: a new commit is
    a new cache entry, the same commit is served from the cache (no file is fetched), and
    offline the newest entry is used with one line saying it could not be checked."""
    tok, raw, _ = _remote_setup(tmp_path)
    (tmp_path / "cfg.json").write_text(json.dumps(raw))
    src = str(Path(__file__).resolve().parents[3] / "src")
    env = {k: v for k, v in os.environ.items()
           if k not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_TOKEN")}  # fmt: skip
    env |= {"HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_DISABLE_TELEMETRY": "1",
            "PYTHONPATH": os.pathsep.join(filter(None, [src, env.get("PYTHONPATH")]))}  # fmt: skip

    def load(**extra: str) -> subprocess.CompletedProcess:
        done = subprocess.run(
            [sys.executable, "-c", _HUB_LOAD, str(tmp_path)], env=env | extra,
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return done

    with HubStandIn() as hub:
        env["HF_ENDPOINT"] = hub.url
        hub.datasets["acme/docs"] = {"data/train.jsonl": _lines("beta")}
        first = load().stdout
        fetched = len([r for r in hub.requests if "/resolve/" in r[1]])
        same = load().stdout
        unchanged_fetches = len([r for r in hub.requests if "/resolve/" in r[1]]) - fetched
        hub.datasets["acme/docs"] = {"data/train.jsonl": _lines("gamma")}  # a new commit
        moved = load().stdout
    offline = load(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    assert "beta" in first and "gamma" not in first and same == first
    assert fetched > 0 and unchanged_fetches == 0
    assert "gamma" in moved and "beta" not in moved
    assert offline.stdout == moved
    assert (
        "validation: could not check whether acme/docs changed since the cached validation set "
        "(offline: HF_HUB_OFFLINE is set); using the cache validation-"
    ) in offline.stderr


@pytest.mark.slow
def test_object_store_object_rewritten_in_place_is_read_again(tmp_path):
    """s3:// (a local S3-compatible server), by file and by glob: an object rewritten in place
    gets a new entry (the objects' ETags); an unchanged bucket is served from the cache."""
    s3fs = pytest.importorskip("s3fs")
    from tests.support.s3_server import S3StandIn

    tok, _, cfg = _remote_setup(tmp_path)
    s3fs.S3FileSystem.clear_instance_cache()  # one made for another server's endpoint
    try:
        with S3StandIn() as s3:
            s3.put("docs/part-0.jsonl", _lines("beta"))
            plans = [files_plan([f"s3://{s3.bucket}/{name}"], [], None)
                     for name in ("docs/part-0.jsonl", "docs/*.jsonl")]  # fmt: skip
            before = [load_validation_set(cfg, tok, tmp_path, plan) for plan in plans]
            for plan in plans:
                load_validation_set(cfg, tok, tmp_path, plan)
            s3.put("docs/part-0.jsonl", _lines("gamma"))
            after = [load_validation_set(cfg, tok, tmp_path, plan) for plan in plans]
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
    for old, new in zip(before, after, strict=True):
        assert "beta" in _text(tok, old) and "gamma" not in _text(tok, old)
        assert "gamma" in _text(tok, new) and "beta" not in _text(tok, new)
    assert len(list((tmp_path / "cache" / "validation").glob("*.npz"))) == 4


def test_hub_revision_that_is_a_commit_needs_no_request():
    """A commit never moves: it is its own identity, even offline (the tests run with
    HF_HUB_OFFLINE=1, where any request to the Hub fails), while a branch must be asked."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    pinned = remote_identity([SourceSpec("acme/docs", revision=commit)])
    assert pinned.unknown is None and pinned.parts == (["acme/docs", commit],)
    moving = remote_identity([SourceSpec("acme/docs", revision="main")])
    assert moving.unknown == ("acme/docs", "offline: HF_HUB_OFFLINE is set")


def test_named_split_validation_file_edited_in_place_is_read_again(tmp_path):
    # orchestrate --data-files train=PATH validation=PATH: the entries name their split
    from lmstream.data.documents import DataPlan

    tok, _, cfg = _remote_setup(tmp_path)
    train = _write(tmp_path / "train.jsonl", "alpha")
    val = _write(tmp_path / "val.jsonl", "beta")
    spec = SourceSpec(path=str(train), data_files=(f"train={train}", f"validation={val}"))
    plan = DataPlan("text", spec, validation="split", validation_spec=spec,
                    validation_split="validation")  # fmt: skip
    before = load_validation_set(cfg, tok, tmp_path, plan)
    _write(val, "gamma")  # same path, other documents
    _as_a_new_run()
    after = load_validation_set(cfg, tok, tmp_path, plan)
    assert "beta" in _text(tok, before)
    assert "gamma" in _text(tok, after) and "beta" not in _text(tok, after)
