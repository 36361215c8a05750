"""`orchestrate` as a newcomer meets it, tried by someone who did not write it (issue #22
review): the tiny recipe's holdout on a small local corpus, `--overwrite` with pre-tokenized
shards, and `--overwrite` on a run folder that cannot be written."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from tests.integration.test_train import corpus  # noqa: F401 (fixture)
from tests.support.read_only import read_only

from lmstream.cli import main
from lmstream.train.run_folder import ABANDONED_DIR

pytestmark = pytest.mark.slow


def _orchestrate(capsys, ws: Path, data: Path, *extra: str) -> tuple[int, str, str]:
    code = main(["orchestrate", "--no-progress", "--vocab-size", "300", "--data-files",
                 str(data), "--experiment", "e", "--workspace", str(ws), *extra])  # fmt: skip
    out, err = capsys.readouterr()
    return code, out, err


def test_the_tiny_recipe_holds_out_a_share_of_a_source_that_ran_out(corpus, tmp_path, capsys):  # noqa: F811
    """The README's `--max-samples 1000000` on a 400-document file: the holdout was sized from
    --max-samples (1,000 documents), all of the data, and `lmstream train` refused the recipe
    as written. Sized from what the source held, it is 5% of it."""
    ws = tmp_path / "ws"
    data = corpus / "train.jsonl"
    code, out, err = _orchestrate(capsys, ws, data, "--max-samples", "1000000",
                                  "--model-size", "tiny")  # fmt: skip
    assert code == 0, err
    assert "the source ran out at 400 documents" in out
    config = ws / "runs" / "e" / "training.yaml"
    # 5% of what it held (20), raised until it holds evaluation's rows in tokens: a share still
    held = yaml.safe_load(config.read_text())["data"]["validation_documents"]
    assert 20 <= held <= 400 // 4
    assert main(["train", "--config", str(config), "--dry-run"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("data: "))
    assert f"the first {held} documents held out of training ({held / 400:.0%} of the data)" in line


def test_overwrite_moves_pretokenized_shards_aside_too(corpus, tmp_path, capsys):  # noqa: F811
    """The previous experiment's token shards (made with its tokenizer, named by its
    training.yaml) were removed by --overwrite while it printed "nothing was deleted"."""
    ws = tmp_path / "ws"
    data = corpus / "train.jsonl"
    assert _orchestrate(capsys, ws, data, "--pretokenize")[0] == 0
    shards = ws / "artifacts" / "tokens" / "e" / "train"
    old = {p.name: p.read_bytes() for p in shards.iterdir()}
    code, out, err = _orchestrate(capsys, ws, data, "--pretokenize", "--overwrite",
                                  "--vocab-size", "280")  # fmt: skip
    assert code == 0, err
    assert "nothing was deleted" in out and "tokens/train" in out
    (abandoned,) = (ws / "runs" / "e" / ABANDONED_DIR).iterdir()
    assert {p.name: p.read_bytes() for p in (abandoned / "tokens" / "train").iterdir()} == old
    assert {p.name: p.read_bytes() for p in shards.iterdir()} != old  # the new tokenizer's


def test_overwrite_of_a_read_only_run_folder(corpus, tmp_path, capsys):  # noqa: F811
    """One line naming the folder, before streaming. It streamed the source and trained the
    tokenizer, then died in a traceback (OSError: Read-only file system) when it came to move
    the previous files aside."""
    ws = tmp_path / "ws"
    data = corpus / "train.jsonl"
    assert _orchestrate(capsys, ws, data)[0] == 0
    run_dir = ws / "runs" / "e"
    (run_dir / "metrics.jsonl").write_text('{"step": 1}\n')
    before = sorted(p.name for p in run_dir.iterdir())
    with read_only(run_dir):
        code, out, err = _orchestrate(capsys, ws, data, "--overwrite")
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and str(run_dir) in lines[0] and "--overwrite" in lines[0], err
    assert "samples:" not in out  # refused before streaming
    assert sorted(p.name for p in run_dir.iterdir()) == before
