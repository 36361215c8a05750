"""The validation holdout orchestrate writes (data.validation_documents) holds the rows
evaluation needs in every source: a mixture with a source of short code lines (~10 tokens each)
got 8 documents, 88 tokens, and `lmstream train` stopped at start-up with "the validation set has
88 tokens, fewer than one row of 129; raise data.validation_documents"."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

from lmstream.cli import main
from lmstream.config import load_training_config
from lmstream.corpus import kjv_documents
from lmstream.data.validation import build_validation_batches, holdout_size
from lmstream.tokenizer import load_tokenizer


def _jsonl(path: Path, texts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    return path


def _orchestrate(capsys, ws: Path, *datasets: Path, extra: tuple[str, ...] = ()) -> str:
    args = ["orchestrate", "--stream", "--no-progress", "--vocab-size", "400", "--model-size",
            "tiny", "--experiment", "mix", "--workspace", str(ws), *extra]  # fmt: skip
    for data in datasets:
        args += ["--dataset", str(data)]
    code = main(args)
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


def _validation_rows(ws: Path) -> dict[str, int]:
    """Rows per source of the validation set train builds from what orchestrate wrote."""
    run = ws / "runs" / "mix"
    cfg = load_training_config(run / "training.yaml")
    tokenizer = load_tokenizer(cfg.tokenizer.tokenizer_json)
    rows: dict[str, int] = {}
    for batch in build_validation_batches(cfg, tokenizer, run):
        rows[batch.source] = rows.get(batch.source, 0) + len(batch.inputs)
    return rows


def test_short_code_lines_get_a_holdout_with_the_rows_evaluation_needs(tmp_path, capsys):
    prose = _jsonl(tmp_path / "prose.jsonl", list(itertools.islice(kjv_documents(), 2400)))
    lines = [f"total_{i} = compute(alpha, beta{i % 7}) + offset" for i in range(2400)]
    code = _jsonl(tmp_path / "code.jsonl", lines)  # ~15 tokens a line
    ws = tmp_path / "ws"
    out = _orchestrate(capsys, ws, prose, code, extra=("--weights", "0.75", "0.25"))
    cfg = load_training_config(ws / "runs" / "mix" / "training.yaml")
    asked = cfg.runtime.evaluation.num_sequences  # 64 rows of 129 tokens
    # 5% (120 lines) held ~13 rows: raised for the code lines, most of them left to train on
    assert holdout_size(2400) < cfg.data.validation_documents <= 2400 // 4
    assert _validation_rows(ws) == {"prose": asked, "code": asked}
    assert "validation holdout:" in out and "'code'" in out


def test_a_source_too_small_for_one_row_is_one_note_saying_what_to_change(tmp_path, capsys):
    prose = _jsonl(tmp_path / "prose.jsonl", list(itertools.islice(kjv_documents(), 300)))
    code = _jsonl(tmp_path / "code.jsonl", [f"y{i % 10} = x" for i in range(40)])
    ws = tmp_path / "ws"
    out = _orchestrate(capsys, ws, prose, code)
    notes = [line for line in out.splitlines() if line.startswith("note:") and "'code'" in line]
    assert len(notes) == 1, out
    assert "fewer than one validation row of 129" in notes[0]
    assert "data.sequence_length" in notes[0] and "validation_split" in notes[0]


def test_a_source_too_small_to_hold_any_out_is_one_note(tmp_path, capsys):
    """data.validation_documents is one number for every source: a source of 3 documents (none
    may be held out) sets it to 0, and the whole mixture then trains with no validation at all,
    no val_loss and nothing in best/. That was silent; it is one note naming the source."""
    prose = _jsonl(tmp_path / "prose.jsonl", list(itertools.islice(kjv_documents(), 300)))
    three = _jsonl(tmp_path / "three.jsonl", list(itertools.islice(kjv_documents(), 300, 303)))
    ws = tmp_path / "ws"
    out = _orchestrate(capsys, ws, prose, three, extra=("--weights", "0.99", "0.01"))
    assert (
        load_training_config(ws / "runs" / "mix" / "training.yaml").data.validation_documents == 0
    )
    notes = [line for line in out.splitlines() if line.startswith("note:") and "'three'" in line]
    assert len(notes) == 1, out
    assert "3 documents" in notes[0] and "no source is validated" in notes[0]
    assert "validation_split" in notes[0]


def test_a_small_source_with_its_own_validation_split_leaves_the_holdout_alone(tmp_path, capsys):
    """A source with a validation_split is not held out, so its size must not size the others'
    holdout: 3 training documents of such a source set data.validation_documents to 0, and no
    source was validated (its own validation split neither)."""
    prose = _jsonl(tmp_path / "prose.jsonl", list(itertools.islice(kjv_documents(), 300)))
    docs = list(itertools.islice(kjv_documents(), 300, 340))
    train, valid = _jsonl(tmp_path / "t.jsonl", docs[:3]), _jsonl(tmp_path / "v.jsonl", docs[3:])
    sources = tmp_path / "sources.json"
    sources.write_text(json.dumps([
        {"dataset": str(prose), "name": "prose", "weight": 0.9},
        {"dataset": str(tmp_path), "data_files": [f"train={train}", f"validation={valid}"],
         "validation_split": "validation", "name": "split", "weight": 0.1},
    ]))  # fmt: skip
    ws = tmp_path / "ws"
    out = _orchestrate(capsys, ws, extra=("--sources", str(sources)))
    cfg = load_training_config(ws / "runs" / "mix" / "training.yaml")
    assert cfg.data.validation_documents >= holdout_size(300), out
    assert set(_validation_rows(ws)) == {"prose", "split"}
    assert "note:" not in out
