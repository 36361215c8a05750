"""`lmstream orchestrate` on a mixture, at the edges a user reaches without trying: huge
weights, file names whose default source name is not a valid name, relative globs in a
sources file, and one file read twice with different text fields."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from lmstream.cli import main
from lmstream.config import load_streaming_config


def _jsonl(path: Path, texts: list[str], field: str = "text") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({field: t}) + "\n" for t in texts), encoding="utf-8")
    return path


def _prose(n: int) -> list[str]:
    return [f"the quick brown fox {i} jumps over the lazy dog number {i * 7}" for i in range(n)]


def _orchestrate(capsys, ws: Path, *args: str) -> tuple[int, str, str]:
    code = main(["orchestrate", "--no-progress", "--vocab-size", "300", "--stream",
                 "--model-size", "tiny", "--experiment", "e", "--workspace", str(ws), *args])  # fmt: skip
    out, err = capsys.readouterr()
    return code, out, err


def test_huge_weights_are_proportions_not_an_overflow(tmp_path, capsys):
    """1e308 is a finite weight: the two halves of the mix, not an OverflowError traceback."""
    a = _jsonl(tmp_path / "a.jsonl", _prose(40))
    b = _jsonl(tmp_path / "b.jsonl", _prose(40)[::-1])
    listing = tmp_path / "mix.yaml"
    listing.write_text("- {dataset: a.jsonl, weight: 1e308}\n- {dataset: b.jsonl, weight: 1e308}\n")
    for args in (
        ["--dataset", str(a), "--dataset", str(b), "--weights", "1e308", "1e308"],
        ["--sources", str(listing)],
    ):
        ws = tmp_path / f"ws{len(args)}"
        code, _, err = _orchestrate(capsys, ws, *args)
        assert code == 0, err
        cfg = load_streaming_config(ws / "runs" / "e" / "streaming_config.json")
        assert cfg.weights() == [0.5, 0.5]


@pytest.mark.parametrize(
    ("stem", "second"),
    [("web..v2", False), ("w" * 140, True)],
)
def test_a_default_name_is_always_a_valid_name(tmp_path, capsys, stem, second):
    """A file named web..v2.jsonl (one --dataset: the seed's command) or two files of the same
    long name: the user gave no name, so the default must be one the schema accepts."""
    data = _jsonl(tmp_path / "x" / f"{stem}.jsonl", _prose(40))
    args = ["--dataset", str(data)]
    if second:
        args += ["--dataset", str(_jsonl(tmp_path / "y" / f"{stem}.jsonl", _prose(30)))]
    ws = tmp_path / "ws"
    code, _, err = _orchestrate(capsys, ws, *args)
    assert code == 0, err
    names = [s.name for s in load_streaming_config(ws / "runs" / "e" / "streaming_config.json").source_list()]  # fmt: skip
    assert len(set(names)) == len(args) // 2 and all(len(n) <= 128 and ".." not in n for n in names)


def test_a_relative_glob_in_a_sources_file_is_relative_to_the_file(tmp_path, capsys, monkeypatch):
    """README: relative paths in a sources file are relative to the file. A glob too, and it is
    written absolute, so training finds it whatever its working folder."""
    _jsonl(tmp_path / "corpus" / "web" / "part-0.jsonl", _prose(30))
    _jsonl(tmp_path / "corpus" / "web" / "part-1.jsonl", _prose(20))
    _jsonl(tmp_path / "corpus" / "code.jsonl", _prose(25))
    listing = tmp_path / "corpus" / "mix.yaml"
    listing.write_text("- {dataset: 'web/*.jsonl', weight: 2}\n- {dataset: code.jsonl}\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    ws = tmp_path / "ws"
    code, _, err = _orchestrate(capsys, ws, "--sources", str(listing))
    assert code == 0, err
    web = load_streaming_config(ws / "runs" / "e" / "streaming_config.json").source_list()[0]
    assert web.dataset == os.path.join(tmp_path, "corpus", "web", "*.jsonl")
    # a glob under the home folder is the user's, not one under the sources file's folder
    monkeypatch.setenv("HOME", str(tmp_path / "corpus"))
    listing.write_text("- {dataset: '~/web/*.jsonl', weight: 2}\n- {dataset: code.jsonl}\n")
    code, _, err = _orchestrate(capsys, ws, "--sources", str(listing), "--overwrite")
    assert code == 0, err
    web = load_streaming_config(ws / "runs" / "e" / "streaming_config.json").source_list()[0]
    assert web.dataset == os.path.join(tmp_path, "corpus", "web", "*.jsonl")


def test_one_file_read_for_two_text_fields_is_two_sources(tmp_path, capsys):
    """A file whose records hold two texts (question and answer) read once per field: different
    documents, not "the same data" listed twice."""
    rows = [{"question": f"what is {i} plus {i}", "answer": f"it is {2 * i} of course"}
            for i in range(40)]  # fmt: skip
    qa = tmp_path / "qa.jsonl"
    qa.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    listing = tmp_path / "mix.yaml"
    listing.write_text(
        "- {name: q, dataset: qa.jsonl, text_field: question}\n"
        "- {name: a, dataset: qa.jsonl, text_field: answer}\n"
    )
    ws = tmp_path / "ws"
    code, _, err = _orchestrate(capsys, ws, "--sources", str(listing))
    assert code == 0, err
    cfg = load_streaming_config(ws / "runs" / "e" / "streaming_config.json")
    assert [s.text_field for s in cfg.source_list()] == ["question", "answer"]


@pytest.mark.parametrize("missing", ["validation_split: validation", "split: test"])
def test_a_missing_split_names_its_source(tmp_path, capsys, missing):
    """Two files, one split missing in the second: the line says which source lacks it."""
    _jsonl(tmp_path / "web.jsonl", _prose(40))
    _jsonl(tmp_path / "code.jsonl", _prose(30))
    listing = tmp_path / "mix.yaml"
    listing.write_text(f"- {{dataset: web.jsonl}}\n- {{dataset: code.jsonl, {missing}}}\n")
    ws = tmp_path / "ws"
    code, _, err = _orchestrate(capsys, ws, "--sources", str(listing))
    lines = err.strip().splitlines()
    assert code == 3 and len(lines) == 1, err
    assert "source 'code'" in lines[0] and "unknown split" in lines[0], err
    assert not (ws / "runs" / "e" / "streaming_config.json").exists()


def test_a_source_of_only_too_long_documents_points_at_max_chars(tmp_path, capsys):
    """Every document of one source over --max-chars: the hint is --max-chars, not the text field."""
    good = _jsonl(tmp_path / "good.jsonl", _prose(40))
    long = _jsonl(tmp_path / "long.jsonl", ["x" * 5000] * 3)
    ws = tmp_path / "ws"
    code, _, err = _orchestrate(
        capsys, ws, "--dataset", str(good), "--dataset", str(long), "--max-chars", "1000"
    )
    lines = err.strip().splitlines()
    assert code == 3 and len(lines) == 1, err
    assert "source 'long'" in lines[0] and "too_long 3" in lines[0], lines[0]
    assert "--max-chars" in lines[0] and "--text-field" not in lines[0], lines[0]


def test_a_json_sources_file_saved_with_a_byte_order_mark_loads(tmp_path, capsys):
    """Windows editors start UTF-8 files with a BOM; the YAML reader skips it, JSON must too."""
    _jsonl(tmp_path / "a.jsonl", _prose(30))
    _jsonl(tmp_path / "b.jsonl", _prose(20))
    listing = tmp_path / "mix.json"
    listing.write_bytes(b'\xef\xbb\xbf[{"dataset": "a.jsonl"}, {"dataset": "b.jsonl"}]')
    code, _, err = _orchestrate(capsys, tmp_path / "ws", "--sources", str(listing))
    assert code == 0, err


def test_a_folder_given_as_the_sources_file_says_so(tmp_path, capsys):
    (tmp_path / "sources").mkdir()
    code, _, err = _orchestrate(capsys, tmp_path / "ws", "--sources", str(tmp_path / "sources"))
    assert code == 2 and "is a folder" in err and "not found" not in err, err


@pytest.mark.slow
def test_a_hub_sources_data_files_are_paths_in_its_repository(tmp_path):
    """`{dataset: acme/kjv, data_files: [data/a.jsonl]}` in a sources file reads that file of
    the hub repository (here the Hub stand-in), not a data/a.jsonl beside the sources file."""
    import subprocess
    import sys

    from tests.reliability.support import subprocess_env
    from tests.support.hub_server import HubStandIn

    lines = [json.dumps({"text": t}).encode() + b"\n" for t in _prose(60)]
    _jsonl(tmp_path / "local.jsonl", _prose(40))
    listing = tmp_path / "mix.yaml"
    listing.write_text(
        "- {dataset: acme/kjv, data_files: [data/a.jsonl]}\n- {dataset: local.jsonl}\n"
    )
    with HubStandIn() as hub:
        hub.datasets["acme/kjv"] = {"data/a.jsonl": b"".join(lines[:30]),
                                    "other/b.jsonl": b"".join(lines[30:])}  # fmt: skip
        env = {k: v for k, v in subprocess_env().items()
               if k not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_TOKEN")}  # fmt: skip
        env |= {"HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf-home")}
        done = subprocess.run(
            [sys.executable, "-m", "lmstream", "orchestrate", "--stream", "--no-progress",
             "--sources", str(listing), "--vocab-size", "300", "--experiment", "hub",
             "--workspace", str(tmp_path / "ws")],
            env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    assert done.returncode == 0, done.stderr
    kjv = load_streaming_config(tmp_path / "ws" / "runs" / "hub" / "streaming_config.json")
    assert kjv.source_list()[0].data_files == ["data/a.jsonl"]
    assert "  a: 30 documents" in done.stdout, done.stdout  # that file (names it), every line


def test_a_file_and_a_glob_over_it_are_refused_naming_both(tmp_path, capsys):
    """sub/c.jsonl + sub/*.jsonl: c's documents would train at both weights; one line, exit 2,
    before anything is streamed or written."""
    c = _jsonl(tmp_path / "sub" / "c.jsonl", _prose(30))
    _jsonl(tmp_path / "sub" / "d.jsonl", _prose(30))
    ws = tmp_path / "ws"
    code, _, err = _orchestrate(capsys, ws, "--dataset", str(c), "--dataset", str(tmp_path / "sub" / "*.jsonl"))  # fmt: skip
    assert code == 2 and f"sources 'c' and 'sub' both read {c}" in err
    assert len(err.strip().splitlines()) == 1 and not (ws / "runs" / "e").exists()


def test_a_source_that_fails_to_re_open_names_itself(tmp_path, capsys, monkeypatch):
    """A short source (too large, as far as _KEEP_CHARS says, to replay from memory) deleted
    after its first pass: re-opening it for its second fails with the one line a failed first
    open gives, naming the source, and a non-zero exit (before, the line lacked the source)."""
    from lmstream import tokenizer_sample
    from lmstream.tokenizer_sample import MixtureSample

    monkeypatch.setattr(tokenizer_sample, "_KEEP_CHARS", 100)
    _jsonl(tmp_path / "web.jsonl", _prose(400))
    short = _jsonl(tmp_path / "code.jsonl", _prose(20))
    read_again = MixtureSample._read_again

    def delete_then_read_again(self, i):  # the file goes away between the passes
        short.unlink(missing_ok=True)
        return read_again(self, i)

    monkeypatch.setattr(MixtureSample, "_read_again", delete_then_read_again)
    ws = tmp_path / "ws"
    code, _, err = _orchestrate(
        capsys, ws, "--dataset", str(tmp_path / "web.jsonl"), "--dataset", str(short)
    )
    lines = err.strip().splitlines()
    assert code == 3 and len(lines) == 1, err
    assert f"source 'code' ({short}): {short}: file not found" in lines[0], err
    assert not (ws / "runs" / "e" / "streaming_config.json").exists()
    # the same line as when the file is missing from the start
    code, _, first = _orchestrate(
        capsys, ws, "--dataset", str(tmp_path / "web.jsonl"), "--dataset", str(short)
    )
    assert code == 3 and first == err


def test_an_http_source_down_at_its_re_open_names_itself_and_a_rerun_starts_clean(
    tmp_path, capsys, monkeypatch
):
    """A short loopback http source that stops answering between its passes (every request
    fails from its re-open on, past a short retry budget): one line naming the source, a
    non-zero exit, and nothing written that the rerun, once the server answers again, trips on
    (it runs to the end without --overwrite)."""
    from tests.support.http_server import Faults, FileServer

    from lmstream import tokenizer_sample
    from lmstream.data import sources
    from lmstream.tokenizer_sample import MixtureSample

    for name, value in {sources.READ_TIMEOUT_ENV: "1", sources.RETRY_DELAY_ENV: "0.1",
                        sources.MAX_RETRY_DELAY_ENV: "0.1", sources.MAX_RETRIES_ENV: "2"}.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(tokenizer_sample, "_KEEP_CHARS", 100)
    web = _jsonl(tmp_path / "web.jsonl", _prose(400))
    body = "".join(json.dumps({"text": t}) + "\n" for t in _prose(20)).encode()
    ws = tmp_path / "ws"
    with FileServer({"code.jsonl": body}) as server:
        read_again = MixtureSample._read_again

        def down_then_read_again(self, i):  # the server stops answering between the passes
            server.faults = Faults(kinds=("503",), rate=1.0)
            return read_again(self, i)

        with monkeypatch.context() as m:
            m.setattr(MixtureSample, "_read_again", down_then_read_again)
            code, _, err = _orchestrate(capsys, ws, "--dataset", str(web), "--dataset", server.url("code.jsonl"))  # fmt: skip
        lines = err.strip().splitlines()
        assert code != 0 and len(lines) == 1, err
        assert f"source 'code' ({server.url('code.jsonl')}): " in lines[0], err
        assert "resume" not in lines[0], err  # orchestrate has no --resume to suggest
        assert server.faults.injected, "the re-open never reached the server"
        server.faults = Faults()  # the server answers again
        code, out, err = _orchestrate(capsys, ws, "--dataset", str(web), "--dataset", server.url("code.jsonl"))  # fmt: skip
    assert code == 0, err
    assert (ws / "runs" / "e" / "streaming_config.json").exists()
