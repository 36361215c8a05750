"""`orchestrate --overwrite` on an experiment that was trained (issue #22): the new tokenizer
and config files replace the old ones, and the run's checkpoints, best copies, metrics and logs
move into RUN/abandoned/<time>/, said in one line; nothing is deleted."""

from __future__ import annotations

import json

from tests.integration.test_orchestrate import _run, _texts

from lmstream.train.run_folder import ABANDONED_DIR, RunFolderError, RunLock


def test_overwrite_moves_a_trained_run_aside(tmp_path, capsys):
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in _texts(200)))
    ws = tmp_path / "ws"
    args = ("--data-files", str(data), "--experiment", "e1", "--workspace", str(ws))
    assert _run(capsys, *args)[0] == 0
    run_dir, tok_dir = ws / "runs" / "e1", ws / "artifacts" / "tokenizer" / "e1"
    old_tokenizer = (tok_dir / "tokenizer.json").read_text()
    for sub in ("checkpoints/step-00000005", "best/step-00000005", "tensorboard"):
        (run_dir / sub).mkdir(parents=True)
        (run_dir / sub / "data").write_text(sub)
    (run_dir / "metrics.jsonl").write_text('{"step": 1, "loss": 5.0}\n')

    held = RunLock(run_dir).acquire()  # a training run holds the folder: refused, untouched
    try:
        code, _, err = _run(capsys, *args, "--overwrite")
    finally:
        held.release()
    assert code == RunFolderError.exit_code and "in use by another lmstream process" in err
    assert (run_dir / "checkpoints" / "step-00000005" / "data").is_file()

    code, out, err = _run(capsys, *args, "--overwrite", "--vocab-size", "280")
    assert code == 0, err
    assert "--overwrite: moved the previous files" in out and "nothing was deleted" in out
    (abandoned,) = (run_dir / ABANDONED_DIR).iterdir()
    for sub in ("checkpoints/step-00000005", "best/step-00000005", "tensorboard"):
        assert (abandoned / sub / "data").read_text() == sub
    assert (abandoned / "metrics.jsonl").read_text() == '{"step": 1, "loss": 5.0}\n'
    assert (abandoned / "training.yaml").is_file()
    assert (abandoned / "tokenizer" / "tokenizer.json").read_text() == old_tokenizer
    # The experiment itself is the new one, with no trace of the old run.
    assert {p.name for p in run_dir.iterdir()} == {
        ABANDONED_DIR,
        "training.yaml",
        "special_tokens.txt",
    }
    assert (tok_dir / "tokenizer.json").read_text() != old_tokenizer
