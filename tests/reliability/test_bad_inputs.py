"""Bad input other than configs: CLI flags out of range, unsafe experiment names, malformed data
records, truncated or corrupted checkpoints, and a tokenizer that does not match the checkpoint.
Refusals are one line, non-zero, and write nothing; bad records are skipped and counted.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from tests.reliability.support import assert_same_weights, tiny_config, tree
from tests.support.training import train_in_process, write_run

from lmstream.cli import main as cli_main
from lmstream.tokenizer import save_tokenizer, train_bpe
from lmstream.train import checkpoint as ckpt

ORCH = ["orchestrate", "--data-files", "DATA", "--model-size", "tiny", "--no-progress"]
GEN = ["generate", "--checkpoint", "CKPT", "--prompt", "In the beginning"]
FLAGS = [
    (ORCH + ["--experiment", "e", "--vocab-size", "0"], "--vocab-size"),
    (ORCH + ["--experiment", "e", "--vocab-size", "100"], "--vocab-size"),
    (ORCH + ["--experiment", "e", "--max-samples", "0"], "--max-samples"),
    (ORCH + ["--experiment", "e", "--max-samples", "-5"], "--max-samples"),
    (ORCH + ["--experiment", "e", "--batch-size", "0"], "--batch-size"),
    (ORCH + ["--experiment", "e", "--max-chars", "0"], "--max-chars"),
    (ORCH + ["--experiment", "e", "--seed", "-1"], "--seed"),
    (ORCH + ["--experiment", "../evil"], "--experiment"),
    (ORCH + ["--experiment", "a/b"], "path separator"),
    (ORCH + ["--experiment", ".."], "'..'"),
    (ORCH + ["--experiment", "/abs"], "path separator"),
    (ORCH + ["--experiment", ""], "empty"),
    (GEN + ["--temperature", "-1"], "--temperature"),
    (GEN + ["--top-p", "0"], "--top-p"),
    (GEN + ["--top-p", "1.5"], "--top-p"),
    (GEN + ["--top-k", "0"], "--top-k"),
    (GEN + ["--max-new-tokens", "0"], "--max-new-tokens"),
    (["demo", "--minutes", "0"], "--minutes"),
    (["demo", "--minutes", "100000"], "--minutes"),
]


@pytest.mark.parametrize(("argv", "words"), FLAGS, ids=[" ".join(a[-2:]) for a, _ in FLAGS])
def test_flag_out_of_range_is_refused(corpus, tmp_path, monkeypatch, capsys, argv, words):
    workspace = tmp_path / "ws"
    monkeypatch.chdir(tmp_path)
    argv = [{"DATA": str(corpus / "train.jsonl"), "CKPT": str(tmp_path / "no-ckpt")}.get(a, a)
            for a in argv]  # fmt: skip
    if argv[0] != "generate":
        argv += ["--workspace", str(workspace)]
    code = cli_main(argv)
    lines = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(lines) == 1, lines
    assert lines[0].startswith(f"lmstream {argv[0]}: error: ") and words in lines[0], lines[0]
    assert tree(tmp_path) == set(), "a refused command wrote files"


def test_every_bad_record_kind_is_skipped_and_counted(corpus, tmp_path):
    good = (corpus / "train.jsonl").read_text().splitlines()  # JSON lines already
    bad = [
        b'{"other": "no text field"}',  # missing_field
        b'{"text": null}',  # missing_field
        b'{"text": 5}',  # not_string
        b'{"text": ["a"]}',  # not_string
        b'{"text": ""}',  # empty
        b'{"text": "   "}',  # empty
        b'{"text": "bad \xff\xfe bytes"}',  # invalid_utf8
        b'{"text": "lone \\udc80 surrogate"}',  # invalid_utf8
        b"{not json",  # invalid_json
        json.dumps({"text": "x" * 1_000_001}).encode(),  # too_long (over 1M characters)
    ]
    lines = [g.encode() for g in good]
    for i, record in enumerate(bad):  # spread through the file, past the validation holdout
        lines.insert(20 + 7 * i, record)
    data = tmp_path / "dirty.jsonl"
    data.write_bytes(b"\n".join(lines) + b"\n")
    cfg = tiny_config(corpus, **{"data.train_shards": [str(data)], "scheduler.total_steps": 4,
                                 "data.shuffle_buffer_size": 0})  # fmt: skip
    run_dir = tmp_path / "run"
    assert train_in_process(write_run(run_dir, cfg)) == 0
    trainer = ckpt.load_trainer_state(run_dir / "checkpoints")
    counts = {}
    for per_worker in trainer["data"][0]["skipped"].values():
        for reason, n in per_worker.items():
            counts[reason] = counts.get(reason, 0) + n
    assert counts == {"missing_field": 2, "not_string": 2, "empty": 2, "invalid_utf8": 2,
                      "invalid_json": 1, "too_long": 1}  # fmt: skip


def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.slow
def test_corrupted_checkpoints_are_skipped_on_resume(corpus, reference, tmp_path, capsys):
    run_dir = tmp_path / "run"
    short = tiny_config(corpus, **{"scheduler.total_steps": 20})
    assert train_in_process(write_run(run_dir, short)) == 0
    folders = ckpt.list_checkpoints(run_dir / "checkpoints")
    assert [p.name for p in folders] == ["step-00000016", "step-00000018", "step-00000020"]
    with open(folders[2] / "trainer_state.pt", "r+b") as f:  # truncated: the size check
        f.truncate(100)
    _flip_last_byte(folders[1] / "model.safetensors")  # same size, other bytes: the sha256
    # Named explicitly, a corrupted checkpoint is refused (no silent fallback) ...
    config = write_run(run_dir, tiny_config(corpus))
    capsys.readouterr()
    assert train_in_process(config, "--resume", str(folders[2])) == 4
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "corrupted checkpoint" in err[0], err
    # ... while --resume takes the newest one that verifies, and the run ends as the reference.
    assert train_in_process(config, "--resume") == 0
    assert "resumed from" in capsys.readouterr().out
    assert_same_weights(run_dir, reference)


@pytest.mark.slow
def test_tokenizer_that_does_not_match_the_checkpoint(corpus, tmp_path, capsys):
    own = tmp_path / "corpus"
    shutil.copytree(corpus, own)
    run_dir = tmp_path / "run"
    short = tiny_config(own, **{"scheduler.total_steps": 4})
    assert train_in_process(write_run(run_dir, short)) == 0
    # The same path and vocabulary size, another tokenizer (trained on other text).
    other = [line[::-1] for line in (own / "train.jsonl").read_text().splitlines()]
    save_tokenizer(train_bpe(other, 300, ["<|endoftext|>", "<|pad|>"]), own / "tok")
    before = tree(run_dir)
    capsys.readouterr()
    config = write_run(run_dir, tiny_config(own, **{"scheduler.total_steps": 8}))
    assert train_in_process(config, "--resume") == 4
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not the tokenizer" in err[0], err
    assert tree(run_dir) - before == set(), tree(run_dir) - before
