"""`lmstream orchestrate` on a mixture: repeated --dataset with --weights, a --sources file,
the tokenizer's sample in the weights' character shares, streaming_config.json version 2, the
seed's one-source command unchanged byte for byte, and bad input refused in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tokenizers import Tokenizer

from lmstream.cli import main
from lmstream.config import load_streaming_config, load_training_config
from lmstream.data.validation import holdout_size

FIXTURES = Path(__file__).parent.parent / "fixtures" / "orchestrate_v1"


def _jsonl(path: Path, texts: list[str], field: str = "text") -> Path:
    path.write_text("".join(json.dumps({field: t}) + "\n" for t in texts), encoding="utf-8")
    return path


def _prose(n: int) -> list[str]:
    # the exact documents today's output in tests/fixtures/orchestrate_v1 was made from
    return [f"the quick brown fox {i} jumps over the lazy dog number {i * 7}" for i in range(n)]


def _code(n: int) -> list[str]:
    # longer and of varied length: the shares are by characters, not documents
    return [
        f"def f_{i}(x):\n" + "    x = x * 3 + 1\n" * (1 + i % 7) + "    return x" for i in range(n)
    ]


def _orchestrate(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["orchestrate", "--no-progress", "--vocab-size", "300", "--stream", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_one_dataset_writes_what_it_wrote_before_mixtures(tmp_path, capsys):
    data = _jsonl(tmp_path / "a.jsonl", _prose(300))
    ws = tmp_path / "ws"
    code, _, err = _orchestrate(
        capsys, "--dataset", str(data), "--max-samples", "200", "--experiment", "seed",
        "--workspace", str(ws),
    )  # fmt: skip
    assert code == 0, err
    for name in ("streaming_config.json", "training.yaml"):
        written = (ws / "runs" / "seed" / name).read_text(encoding="utf-8")
        expected = (FIXTURES / name).read_text(encoding="utf-8")
        expected = expected.replace("WORKSPACE", str(ws)).replace("DATA", str(data))
        assert written == expected, name


def test_two_datasets_with_weights(tmp_path, capsys):
    prose = _jsonl(tmp_path / "prose.jsonl", _prose(600))
    code_file = _jsonl(tmp_path / "code.jsonl", _code(600))
    ws = tmp_path / "ws"
    code, out, err = _orchestrate(
        capsys, "--dataset", str(prose), "--dataset", str(code_file), "--weights", "0.75", "0.25",
        "--experiment", "mix", "--workspace", str(ws), "--model-size", "tiny",
    )  # fmt: skip
    assert code == 0, err
    run = ws / "runs" / "mix"
    raw = json.loads((run / "streaming_config.json").read_text())
    assert raw["version"] == 2 and "dataset" not in raw and "max_samples" not in raw
    cfg = load_streaming_config(run / "streaming_config.json")
    assert [s.name for s in cfg.source_list()] == ["prose", "code"]
    assert cfg.weights() == [0.75, 0.25]
    assert [s.dataset for s in cfg.source_list()] == [str(prose), str(code_file)]
    # the summary reports each source's share of the tokenizer's characters: prose (shorter
    # documents) ended its pass first and was read again, so the shares hold the weights until
    # code ended its own; each source's documents are its first pass
    shares = {line.split(":")[0].strip(): line for line in out.splitlines() if "% vs " in line}
    assert "600 documents" in shares["prose"] and "600 documents" in shares["code"], out
    assert "75.0% vs 75.0%" in shares["prose"] or "74.9% vs 75.0%" in shares["prose"], out
    assert "source 'prose' ended its pass of 600 documents before the others" in out, out
    tok = Tokenizer.from_file(str(ws / "artifacts" / "tokenizer" / "mix" / "tokenizer.json"))
    assert tok.token_to_id("<|endoftext|>") == 0
    train = load_training_config(run / "training.yaml")
    # no --max-samples: at least 5% of the 600 documents each source gave (a holdout of 1,000
    # would be all of it, and training would refuse the recipe), raised towards the validation
    # rows' tokens but never past a quarter of a source
    assert holdout_size(600) == 30 < train.data.validation_documents <= 600 // 4


def test_sources_file_gives_per_source_fields(tmp_path, capsys):
    web = _jsonl(tmp_path / "web.jsonl", _prose(400))
    code_file = _jsonl(tmp_path / "code.jsonl", _code(400), field="content")
    listing = tmp_path / "mix.yaml"
    listing.write_text(
        "- {name: web, dataset: web.jsonl, weight: 3, max_samples: 300}\n"
        "- {name: code, dataset: code.jsonl, weight: 1, text_field: content, max_samples: 100}\n"
    )
    ws = tmp_path / "ws"
    code, out, err = _orchestrate(
        capsys, "--sources", str(listing), "--experiment", "file", "--workspace", str(ws),
        "--model-size", "tiny",
    )  # fmt: skip
    assert code == 0, err
    cfg = load_streaming_config(ws / "runs" / "file" / "streaming_config.json")
    web_cfg, code_cfg = cfg.source_list()
    assert (web_cfg.dataset, code_cfg.dataset) == (str(web), str(code_file))  # file-relative
    assert code_cfg.text_field == "content" and web_cfg.text_field == "text"
    assert (web_cfg.max_samples, code_cfg.max_samples) == (300, 100)
    assert cfg.weights() == [0.75, 0.25]
    # each source's holdout (validation_documents) is sized for the smallest source's pass: at
    # least 5% of it, raised towards the validation rows' tokens up to a quarter of it
    train = load_training_config(ws / "runs" / "file" / "training.yaml")
    assert holdout_size(100) <= train.data.validation_documents <= 100 // 4
    assert "web:" in out and "code:" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--dataset", "A", "--dataset", "B", "--weights", "1", "-1"],
         "B.jsonl: a weight is a finite number >= 0"),
        (["--dataset", "A", "--dataset", "B", "--weights", "0", "0"],
         "--weights: the weights sum to zero"),
        (["--dataset", "A", "--dataset", "B", "--weights", "nan", "1"],
         "--weights: nan for --dataset"),
        (["--dataset", "A", "--dataset", "B", "--weights", "1"],
         "--weights: 1 weights for 2 datasets"),
        (["--dataset", "A", "--weights", "1"], "--weights: weights mix several sources"),
        (["--weights", "0.5", "0.5"], "--weights: weights mix several sources"),
        (["--dataset", "A", "--dataset", "A"], "sources 'A' and 'A-2' both read"),
        (["--sources", "SOURCES", "--dataset", "A"], "--sources: the file lists every source"),
        (["--sources", "DUPLICATE"], "duplicate source name 'web'"),
        (["--sources", "UNKNOWN"], "source 'code': txt_field: unknown key; did you mean 'text_field'?"),
        (["--sources", "NEGATIVE"], "source 'code': weight: Input should be greater than or equal to 0"),
        (["--sources", "NOTALIST"], "expected a non-empty list of sources"),
    ],
)  # fmt: skip
def test_bad_mixtures_are_one_line_exit_2_nothing_written(tmp_path, capsys, args, message):
    a = _jsonl(tmp_path / "A.jsonl", _prose(50))
    b = _jsonl(tmp_path / "B.jsonl", _code(50))
    files = {
        "SOURCES": "- {dataset: A.jsonl}\n- {dataset: B.jsonl}\n",
        "DUPLICATE": "- {name: web, dataset: A.jsonl}\n- {name: web, dataset: B.jsonl}\n",
        "UNKNOWN": "- {name: web, dataset: A.jsonl}\n- {name: code, dataset: B.jsonl, txt_field: x}\n",
        "NEGATIVE": '[{"dataset": "A.jsonl"}, {"name": "code", "dataset": "B.jsonl", "weight": -2}]',
        "NOTALIST": "{dataset: A.jsonl}\n",
    }
    for key, text in files.items():
        (tmp_path / f"{key}.yaml").write_text(text)
    paths = {"A": str(a), "B": str(b), **{k: str(tmp_path / f"{k}.yaml") for k in files}}
    args = [paths.get(x, x) for x in args]
    ws = tmp_path / "ws"
    code, _, err = _orchestrate(capsys, *args, "--experiment", "bad", "--workspace", str(ws))
    assert code == 2, err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert not ws.exists() or not any(ws.rglob("*.json"))


def test_a_source_without_documents_is_named(tmp_path, capsys):
    good = _jsonl(tmp_path / "good.jsonl", _prose(50))
    empty = _jsonl(tmp_path / "blank.jsonl", ["   "] * 5)
    ws = tmp_path / "ws"
    code, _, err = _orchestrate(
        capsys, "--dataset", str(good), "--dataset", str(empty), "--experiment", "e",
        "--workspace", str(ws),
    )  # fmt: skip
    assert code == 3
    assert f"source 'blank' ({empty}): no usable documents (skipped: empty 5)" in err
    assert not (ws / "runs" / "e" / "streaming_config.json").exists()


def test_a_source_without_its_text_field_is_named(tmp_path, capsys):
    good = _jsonl(tmp_path / "good.jsonl", _prose(50))
    other = _jsonl(tmp_path / "other.jsonl", _code(50), field="content")
    ws = tmp_path / "ws"
    code, _, err = _orchestrate(
        capsys, "--dataset", str(good), "--dataset", str(other), "--experiment", "e",
        "--workspace", str(ws),
    )  # fmt: skip
    lines = err.strip().splitlines()
    assert code == 3 and len(lines) == 1, err
    assert f"{other}: text field 'text' not found" in lines[0]
    assert not (ws / "runs" / "e" / "streaming_config.json").exists()


def test_the_seed_command_plans_what_it_wrote_before(tmp_path):
    """The seed's own command (a hub id, nothing streamed here): its streaming_config.json is
    byte for byte the file written before mixtures (tests/fixtures/orchestrate_v1, made from
    the code before them), and its source is opened with the same settings."""
    from lmstream.cli import build_parser
    from lmstream.config import dump_streaming_config
    from lmstream.flags import from_args
    from lmstream.orchestrate_options import OrchestrateOptions
    from lmstream.orchestrate_sources import plan_sources
    from lmstream.workspace import ExperimentPaths

    argv = ["orchestrate", "--stream", "--dataset", "HuggingFaceFW/fineweb", "--split", "train",
            "--max-samples", "1000000", "--vocab-size", "50000", "--experiment",
            "runpod-1b-streaming", "--workspace", str(tmp_path / "ws")]  # fmt: skip
    opts = from_args(OrchestrateOptions, build_parser().parse_args(argv))
    cfg, sources, specs = plan_sources(
        opts, ExperimentPaths.create(opts.workspace, opts.experiment)
    )
    dump_streaming_config(cfg, tmp_path / "streaming_config.json")
    expected = (FIXTURES / "seed_streaming_config.json").read_text(encoding="utf-8")
    assert (tmp_path / "streaming_config.json").read_text(encoding="utf-8") == expected
    assert [s.name for s in sources] == ["fineweb"] and specs[0].path == "HuggingFaceFW/fineweb"
    assert (specs[0].subset, specs[0].data_files, specs[0].batch_size) == (None, None, 1000)


def test_an_http_source_re_opened_counts_its_bad_records_once(tmp_path, capsys, monkeypatch):
    """A short http source (40 documents and 5 bad records) beside a long local one, too large
    (as far as _KEEP_CHARS says) to keep: re-opened from the loopback server until the long one
    ends; its bad records are counted once, its size for the holdout is its first pass."""
    from tests.support.http_server import FileServer

    from lmstream import tokenizer_sample

    monkeypatch.setattr(tokenizer_sample, "_KEEP_CHARS", 100)
    lines = [json.dumps({"text": t}) for t in _code(40)] + ["{not json"] * 5
    body = "\n".join(lines).encode() + b"\n"
    prose = _jsonl(tmp_path / "prose.jsonl", _prose(2000))
    ws = tmp_path / "ws"
    with FileServer({"code.jsonl": body}) as server:
        code, out, err = _orchestrate(
            capsys, "--dataset", str(prose), "--dataset", server.url("code.jsonl"),
            "--weights", "0.5", "0.5", "--experiment", "mix", "--workspace", str(ws),
            "--model-size", "tiny",
        )  # fmt: skip
    assert code == 0, err
    assert "skipped: 5 (" in out, out
    assert "code: 40 documents" in out and "prose: 2,000 documents" in out, out
    assert "read again from its start" in out, out
    cfg = load_training_config(ws / "runs" / "mix" / "training.yaml")
    # sized from code's first pass (40 documents), not the 1,000s it gave with its repeats;
    # then raised to fill evaluation's rows, to a quarter of it at most
    assert f"{holdout_size(40)} by document count alone" in out, out
    assert cfg.data.validation_documents == 40 // 4, out
