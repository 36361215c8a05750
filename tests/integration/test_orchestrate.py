"""`lmstream orchestrate` end to end through the real CLI on local files and a loopback URL."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tests.support.http_server import Faults, FileServer
from tokenizers import Tokenizer

from lmstream.cli import main
from lmstream.config import load_special_tokens, load_streaming_config, load_training_config
from lmstream.model.presets import PRESETS

WORDS = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "a",
    "lazy",
    "dog",
    "while",
    "seven",
    "wizards",
    "box",
    "jolly",
    "quartz",
]


def _texts(n: int) -> list[str]:
    return [
        " ".join(WORDS[(i * k) % len(WORDS)] for k in range(1, 12)) + f" {i}." for i in range(n)
    ]


def _run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["orchestrate", "--no-progress", "--vocab-size", "300", *args])
    out, err = capsys.readouterr()
    return code, out, err


def _check_outputs(ws: Path, exp: str, stream: bool, model_size: str = "1b") -> dict:
    tok_dir, run_dir = ws / "artifacts" / "tokenizer" / exp, ws / "runs" / exp
    assert {p.name for p in tok_dir.iterdir()} == {"tokenizer.json", "vocab.json", "merges.txt"}
    expected = {"special_tokens.txt", "training.yaml"} | (
        {"streaming_config.json"} if stream else set()
    )
    assert {p.name for p in run_dir.iterdir()} == expected
    tok = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
    assert tok.get_vocab_size() == 300
    assert tok.token_to_id("<|endoftext|>") == 0 and tok.token_to_id("<|pad|>") == 1
    assert json.loads((run_dir / "special_tokens.txt").read_text())[:2] == [
        "<|endoftext|>",
        "<|pad|>",
    ]
    cfg = load_training_config(run_dir / "training.yaml")
    assert cfg.tokenizer.tokenizer_json.resolve() == (tok_dir / "tokenizer.json").resolve()
    assert load_special_tokens(cfg.tokenizer.special_tokens)[0] == "<|endoftext|>"
    assert cfg.runtime.checkpoint.directory.resolve() == (run_dir / "checkpoints").resolve()
    assert cfg.model.hidden_size == PRESETS[model_size]["hidden_size"]
    assert (
        "/" + str(ws).strip("/") not in (run_dir / "training.yaml").read_text().split("\nmodel:")[1]
    )
    return {"cfg": cfg, "tok": tok, "run_dir": run_dir}


def test_jsonl_stream_writes_every_file(tmp_path, capsys):
    data = tmp_path / "c.jsonl"
    lines = [json.dumps({"text": t}) for t in _texts(200)]
    lines[5:5] = ['{"other": 1}', '{"text": 7}', '{"text": ""}', '{"text": "\\udc80"}', "{oops"]
    data.write_text("\n".join(lines) + "\n")
    ws = tmp_path / "ws"
    code, out, err = _run(
        capsys,
        "--stream",
        "--data-files",
        str(data),
        "--experiment",
        "e1",
        "--workspace",
        str(ws),
        "--max-samples",
        "150",
        "--special-tokens",
        "<|user|>",
    )
    assert code == 0, err
    res = _check_outputs(ws, "e1", stream=True)
    sc = load_streaming_config(res["run_dir"] / "streaming_config.json")
    assert sc.data_files == [str(data)] and sc.max_samples == 150 and sc.text_field == "text"
    assert sc.stream_batch_size == 1000 and sc.experiment == "e1"
    assert res["tok"].token_to_id("<|user|>") == 2
    assert "samples: 150 documents" in out
    assert (
        "skipped: 5 (empty 1, invalid_json 1, invalid_utf8 1, missing_field 1, not_string 1)" in out
    )
    assert "vocab size: 300" in out and str(res["run_dir"]) in out

    # Existing experiment: refused without --overwrite, replaced with it.
    code, _, err = _run(
        capsys, "--stream", "--data-files", str(data), "--experiment", "e1", "--workspace", str(ws)
    )
    assert code == 2 and "already exists" in err and "--overwrite" in err
    code, out, _ = _run(
        capsys,
        "--stream",
        "--data-files",
        str(data),
        "--experiment",
        "e1",
        "--workspace",
        str(ws),
        "--overwrite",
    )
    assert code == 0 and "samples: 200 documents" in out


def test_parquet_and_txt_files_mode(tmp_path, capsys):
    pq.write_table(pa.table({"body": _texts(300)}), tmp_path / "c.parquet")
    ws = tmp_path / "ws"
    code, out, err = _run(
        capsys,
        "--stream",
        "--dataset",
        str(tmp_path / "c.parquet"),
        "--text-field",
        "body",
        "--experiment",
        "pq",
        "--workspace",
        str(ws),
        "--model-size",
        "tiny",
    )
    assert code == 0, err
    res = _check_outputs(ws, "pq", stream=True, model_size="tiny")
    assert res["cfg"].runtime.precision == "fp32" and "samples: 300 documents" in out

    (tmp_path / "train.txt").write_text("\n".join(_texts(100)) + "\n\n")
    (tmp_path / "valid.txt").write_text("\n".join(_texts(10)) + "\n")
    code, out, err = _run(
        capsys,
        "--data-files",
        f"train={tmp_path}/train.txt",
        f"validation={tmp_path}/valid.txt",
        "--validation-split",
        "validation",
        "--experiment",
        "files",
        "--workspace",
        str(ws),
    )
    assert code == 0, err
    res = _check_outputs(ws, "files", stream=False)
    assert [Path(p).resolve() for p in res["cfg"].data.train_shards] == [tmp_path / "train.txt"]
    assert [Path(p).resolve() for p in res["cfg"].data.validation_shards] == [
        tmp_path / "valid.txt"
    ]
    assert "skipped: 1 (empty 1)" in out


def test_workspace_can_move(tmp_path, capsys):
    data = tmp_path / "c.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in _texts(50)))
    code, _, err = _run(
        capsys,
        "--stream",
        "--data-files",
        str(data),
        "--experiment",
        "m",
        "--workspace",
        str(tmp_path / "a"),
    )
    assert code == 0, err
    (tmp_path / "a").rename(tmp_path / "b")
    cfg = load_training_config(tmp_path / "b" / "runs" / "m" / "training.yaml")
    assert cfg.tokenizer.tokenizer_json.is_file()


def test_loopback_url_with_faults(tmp_path, capsys):
    # The first GET fails (mid-file faults: tests/unit/data/test_sources.py).
    body = "".join(json.dumps({"text": t}) + "\n" for t in _texts(4000)).encode()
    with FileServer({"c.jsonl": body}, Faults(kinds=("drop", "503"), on_requests={1})) as server:
        code, out, err = _run(
            capsys,
            "--stream",
            "--dataset",
            server.url("c.jsonl"),
            "--experiment",
            "url",
            "--workspace",
            str(tmp_path / "ws"),
            "--max-chars",
            "4000",
        )
        assert server.faults.injected
    assert code == 0, err
    _check_outputs(tmp_path / "ws", "url", stream=True)
    assert "samples: 4,000 documents" in out and "retries: 1" in out


@pytest.mark.parametrize(
    "args,message,exit_code",
    [
        (["--split", "validation"], "unknown split 'validation'; this source has: train", 3),
        (["--text-field", "body"], "text field 'body' not found", 3),
        (["--experiment", "../evil"], "--experiment", 2),
        (["--vocab-size", "10"], "--vocab-size", 2),
        (["--max-samples", "0"], "--max-samples", 2),
    ],
)
def test_bad_inputs_fail_with_one_line(tmp_path, capsys, args, message, exit_code):
    data = tmp_path / "c.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in _texts(20)))
    base = [
        "--stream",
        "--data-files",
        str(data),
        "--experiment",
        "bad",
        "--workspace",
        str(tmp_path / "ws"),
    ]
    code = main(["orchestrate", "--no-progress", *base, "--vocab-size", "300", *args])
    err = capsys.readouterr().err
    assert code == exit_code
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "ws" / "runs" / "bad" / "training.yaml").exists()


def test_missing_file_and_unreachable_hub(tmp_path, capsys):
    ws = str(tmp_path / "ws")
    code, _, err = _run(
        capsys,
        "--stream",
        "--data-files",
        str(tmp_path / "nope.jsonl"),
        "--experiment",
        "x",
        "--workspace",
        ws,
    )
    assert code == 3 and "nope.jsonl: file not found" in err
    code, _, err = _run(
        capsys,
        "--stream",
        "--dataset",
        "no-such-org/no-such-set",
        "--experiment",
        "x",
        "--workspace",
        ws,
    )
    assert code == 3 and "no-such-org/no-such-set" in err and len(err.strip().splitlines()) == 1
