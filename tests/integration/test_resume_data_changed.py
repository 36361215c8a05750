"""A resume after the data changed says so (lmstream.data.content_record): a local file that was
appended to or edited in place, and a URL that serves other bytes. The checkpoint's data position
then points into other documents; the resume used to continue silently."""

from __future__ import annotations

import json
import os
from pathlib import Path

import yaml
from tests.support.http_server import FileServer
from tests.support.training import (
    kjv_corpus_fixture,
    tiny_training_config,
    train_in_process,
    write_run,
)

corpus = kjv_corpus_fixture(60, 300)
CHANGED = "changed since this checkpoint was written"


def _raise_total_steps(config: Path, steps: int) -> None:
    cfg = yaml.safe_load(config.read_text())
    cfg["scheduler"]["total_steps"] = steps
    config.write_text(yaml.safe_dump(cfg))


def _resume_output(config: Path, capsys) -> str:
    capsys.readouterr()
    _raise_total_steps(config, 5)
    assert train_in_process(config, "--resume") == 0
    return capsys.readouterr().out


def _local_run(corpus: Path, tmp_path: Path, data: Path) -> Path:
    cfg = tiny_training_config(corpus, 3, **{"data.train_shards": [str(data)]})
    config = write_run(tmp_path / "run", cfg)
    assert train_in_process(config) == 0
    return config


def test_resume_with_unchanged_data_says_nothing(corpus, tmp_path, capsys):
    data = tmp_path / "train.jsonl"
    data.write_bytes((corpus / "train.jsonl").read_bytes())
    out = _resume_output(_local_run(corpus, tmp_path, data), capsys)
    assert "resumed from" in out
    assert CHANGED not in out, out


def test_resume_after_documents_were_appended_names_the_file(corpus, tmp_path, capsys):
    data = tmp_path / "train.jsonl"
    original = (corpus / "train.jsonl").read_bytes()
    data.write_bytes(original)
    config = _local_run(corpus, tmp_path, data)
    data.write_bytes(original + json.dumps({"text": "a new document " * 20}).encode() + b"\n")
    out = _resume_output(config, capsys)
    lines = [line for line in out.splitlines() if CHANGED in line]
    assert len(lines) == 1, out
    assert f"{data}: {len(original):,} -> {data.stat().st_size:,} bytes" in lines[0]
    assert "training continues at the checkpoint's position" in lines[0]


def test_resume_after_an_edit_in_place_of_the_same_size(corpus, tmp_path, capsys):
    data = tmp_path / "train.jsonl"
    original = (corpus / "train.jsonl").read_bytes()
    data.write_bytes(original)
    config = _local_run(corpus, tmp_path, data)
    data.write_bytes(original.replace(b"e", b"a", 50))  # same size, other text
    st = data.stat()
    os.utime(data, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a coarse clock still moves
    out = _resume_output(config, capsys)
    assert f"{data}: modified (same size)" in out, out


def test_resume_after_a_url_serves_other_bytes(corpus, tmp_path, capsys):
    lines = (corpus / "train.jsonl").read_bytes().splitlines(keepends=True)
    files = {"train.jsonl": b"".join(lines)}
    with FileServer(files) as server:
        run_dir = tmp_path / "run"
        cfg = tiny_training_config(corpus, 3, **{"data.train_shards": []})
        config = write_run(run_dir, cfg)
        url = server.url("train.jsonl")
        streaming = {"dataset": url, "data_files": [url], "split": "train"}
        (run_dir / "streaming_config.json").write_text(json.dumps(streaming))
        assert train_in_process(config) == 0
        files["train.jsonl"] = b"".join(reversed(lines))  # same size, other order
        out = _resume_output(config, capsys)
    changed = [line for line in out.splitlines() if CHANGED in line]
    assert len(changed) == 1, out
    assert f"{url}: its content identity changed" in changed[0]


def test_resume_after_a_named_split_file_changed(corpus, tmp_path, capsys):
    # orchestrate --data-files train=PATH validation=PATH: the entries name their split
    train, val = tmp_path / "train.jsonl", tmp_path / "val.jsonl"
    lines = (corpus / "train.jsonl").read_bytes().splitlines(keepends=True)
    train.write_bytes(b"".join(lines[10:]))
    val.write_bytes(b"".join(lines[:10]))
    run_dir = tmp_path / "run"
    config = write_run(run_dir, tiny_training_config(corpus, 3, **{"data.train_shards": []}))
    streaming = {"dataset": str(train), "data_files": [f"train={train}", f"validation={val}"],
                 "split": "train", "validation_split": "validation"}  # fmt: skip
    (run_dir / "streaming_config.json").write_text(json.dumps(streaming))
    assert train_in_process(config) == 0
    train.write_bytes(b"".join(reversed(lines[10:])) + lines[0])
    out = _resume_output(config, capsys)
    changed = [line for line in out.splitlines() if CHANGED in line]
    assert len(changed) == 1, out
    assert f"{train}: " in changed[0], changed


def test_resume_of_a_git_cloned_folder_after_git_status_says_nothing(corpus, tmp_path, capsys):
    # a dataset folder cloned with git: git writes into .git, which training never reads
    folder = tmp_path / "corpus"
    (folder / ".git").mkdir(parents=True)
    (folder / ".git" / "index").write_bytes(b"index")
    (folder / "train.jsonl").write_bytes((corpus / "train.jsonl").read_bytes())
    config = _local_run(corpus, tmp_path, folder)
    (folder / ".git" / "index").write_bytes(b"index, refreshed")
    (folder / ".git" / "FETCH_HEAD").write_bytes(b"fetched")
    out = _resume_output(config, capsys)
    assert "resumed from" in out
    assert CHANGED not in out, out


def test_a_url_without_etag_does_not_hide_a_change_of_another(corpus, tmp_path, capsys):
    # training data from a server with ETags, validation data from one without: the training
    # URL's change is still told (the validation URL cannot be checked, and says nothing)
    lines = (corpus / "train.jsonl").read_bytes().splitlines(keepends=True)
    train = {"train.jsonl": b"".join(lines[10:])}
    with FileServer(train) as tagged, FileServer({"val.jsonl": b"".join(lines[:10])},
                                                 etag=False) as untagged:  # fmt: skip
        url = tagged.url("train.jsonl")
        cfg = tiny_training_config(corpus, 3, **{
            "data.train_shards": [url], "data.validation_shards": [untagged.url("val.jsonl")],
        })  # fmt: skip
        config = write_run(tmp_path / "run", cfg)
        assert train_in_process(config) == 0
        train["train.jsonl"] = b"".join(reversed(lines[10:]))
        out = _resume_output(config, capsys)
    changed = [line for line in out.splitlines() if CHANGED in line]
    assert len(changed) == 1, out
    assert f"{url}: its content identity changed" in changed[0]
