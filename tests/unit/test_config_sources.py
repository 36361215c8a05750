"""The mixture schema: default source names, unique names, weights, streaming_config versions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.support.training import tiny_training_config

from lmstream.config import (
    dump_streaming_config,
    load_streaming_config,
    parse_training_config,
)
from lmstream.config_sources import default_source_name
from lmstream.errors import ConfigError


@pytest.mark.parametrize(
    ("location", "name"),
    [
        ("HuggingFaceFW/fineweb-edu", "fineweb-edu"),
        ("/data/shakespeare.jsonl", "shakespeare"),
        ("/data/wiki.jsonl.gz", "wiki"),
        ("/data/web/*.jsonl", "web"),
        ("https://example.org/files/code.parquet?download=1", "code"),
        ("s3://bucket/math/part-*.jsonl.zst", "math"),
        ("/data/my corpus.txt", "my-corpus"),
    ],
)
def test_a_source_is_named_after_its_last_path_component(location: str, name: str) -> None:
    assert default_source_name(location) == name


def write(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(data))
    return path


def test_version_2_names_sources_uniquely_and_normalises_weights(tmp_path: Path) -> None:
    cfg = load_streaming_config(
        write(
            tmp_path / "sc.json",
            {
                "version": 2,
                "sources": [
                    {"dataset": "/a/web.jsonl", "weight": 3},
                    {"dataset": "/b/web.jsonl", "weight": 1},
                    {"dataset": "org/code", "name": "code", "weight": 0},
                ],
            },
        )
    )
    assert [s.name for s in cfg.source_list()] == ["web", "web-2", "code"]
    assert cfg.weights() == [0.75, 0.25, 0.0]
    dump_streaming_config(cfg, tmp_path / "again.json")
    written = json.loads((tmp_path / "again.json").read_text())
    assert "dataset" not in written and len(written["sources"]) == 3
    assert load_streaming_config(tmp_path / "again.json") == cfg


def test_version_1_is_one_source_and_dumps_as_before(tmp_path: Path) -> None:
    data = {"dataset": "HuggingFaceFW/fineweb", "max_samples": 10}
    cfg = load_streaming_config(write(tmp_path / "sc.json", data))
    (only,) = cfg.source_list()
    assert (only.name, only.dataset, only.max_samples, cfg.weights()) == (
        "fineweb", "HuggingFaceFW/fineweb", 10, [1.0]
    )  # fmt: skip
    dump_streaming_config(cfg, tmp_path / "again.json")
    written = json.loads((tmp_path / "again.json").read_text())
    assert "sources" not in written and written["dataset"] == "HuggingFaceFW/fineweb"


@pytest.mark.parametrize(
    ("sources", "message"),
    [
        ([{"dataset": "a", "weight": -1}], "sources.0.weight"),
        ([{"dataset": "a", "weight": 0}], "sum to zero"),
        ([{"dataset": "a", "weight": "nan"}], "sources.0.weight"),
        (
            [{"dataset": "a", "name": "x"}, {"dataset": "b", "name": "x"}],
            "duplicate source name 'x'",
        ),
        ([{"dataset": "a", "name": "../x"}], "contains a path separator"),
        ([{"dataset": "a", "colour": "red"}], "sources.0.colour"),
        ([], "non-empty list"),
        ([{"dataset": "a", "weight": True}], "a weight is a number, not true"),
        ([{"dataset": "a", "validation_split": "train"}], "is also the training split"),
    ],
)
def test_bad_mixtures_are_one_line_naming_the_field(
    tmp_path: Path, sources: list, message: str
) -> None:
    with pytest.raises(ConfigError) as err:
        load_streaming_config(write(tmp_path / "sc.json", {"version": 2, "sources": sources}))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_version_2_refuses_top_level_source_fields(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="dataset: version 2 gives each source"):
        load_streaming_config(
            write(
                tmp_path / "sc.json", {"version": 2, "dataset": "a", "sources": [{"dataset": "b"}]}
            )
        )
    with pytest.raises(ConfigError, match="sources: a mixture needs version: 2"):
        load_streaming_config(
            write(tmp_path / "sc.json", {"dataset": "a", "sources": [{"dataset": "b"}]})
        )
    with pytest.raises(ConfigError, match="dataset: missing"):
        load_streaming_config(write(tmp_path / "sc.json", {}))


def test_files_mode_mixture_in_training_yaml(tmp_path: Path) -> None:
    cfg = tiny_training_config(tmp_path / "unused.jsonl", 2)
    cfg["data"].pop("train_shards", None)
    cfg["data"]["mixture"] = [
        {"train_shards": ["web/*.jsonl"], "weight": 2},
        {"train_shards": ["code.jsonl"], "validation_shards": ["code-val.jsonl"]},
    ]
    parsed = parse_training_config(cfg, tmp_path)
    mixture = parsed.data.mixture
    assert [s.name for s in mixture] == ["web", "code"]
    assert mixture[0].train_shards == [str(tmp_path / "web" / "*.jsonl")]
    cfg["data"]["train_shards"] = ["x.jsonl"]
    with pytest.raises(ConfigError, match="data.mixture: give the files under each source"):
        parse_training_config(cfg, tmp_path)


def test_version_1_refuses_validating_on_the_training_split(tmp_path: Path) -> None:
    data = {"dataset": "a", "split": "train", "validation_split": "train"}
    with pytest.raises(ConfigError, match="validation_split: 'train' is also the training split"):
        load_streaming_config(write(tmp_path / "sc.json", data))


def _jsonl(path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text('{"text": "a line"}\n')
    return str(path)


@pytest.mark.parametrize("second", ["sub/*.jsonl", "sub", "sub/c.jsonl", "sub/../sub/c.jsonl"])
def test_overlapping_sources_are_refused_naming_both(tmp_path: Path, second: str) -> None:
    """sub/c.jsonl beside sub/*.jsonl (or the folder, or the file again) trains c's documents
    twice as often as its weight says: one line naming both sources and the shared file."""
    c = _jsonl(tmp_path / "sub" / "c.jsonl")
    _jsonl(tmp_path / "sub" / "d.jsonl")
    sources = [{"dataset": c, "name": "c"}, {"dataset": str(tmp_path / second), "name": "all"}]
    with pytest.raises(ConfigError) as err:
        load_streaming_config(write(tmp_path / "sc.json", {"version": 2, "sources": sources}))
    text = str(err.value)
    assert "'c'" in text and "'all'" in text and c in text and "\n" not in text
    cfg = tiny_training_config(tmp_path / "unused.jsonl", 2)
    cfg["data"].pop("train_shards", None)
    cfg["data"]["mixture"] = [{"train_shards": ["sub/c.jsonl"]}, {"train_shards": [second]}]
    with pytest.raises(ConfigError, match=r"data.mixture: sources 'c' and '[a-z2-]+' both read"):
        parse_training_config(cfg, tmp_path)


@pytest.mark.parametrize(
    "mixture",
    [
        [{"train_shards": ["a.jsonl"]}, {"train_shards": ["*.jsonl"]}],
        [{"train_shards": ["a.jsonl"], "weight": 0}],
    ],
)
def test_a_files_mixture_error_names_data_mixture_once(tmp_path: Path, mixture: list) -> None:
    """The error's path is data.mixture (it read "data.data.mixture: ...")."""
    _jsonl(tmp_path / "a.jsonl")
    cfg = tiny_training_config(tmp_path / "unused.jsonl", 2)
    cfg["data"].pop("train_shards", None)
    cfg["data"]["mixture"] = mixture
    with pytest.raises(ConfigError) as err:
        parse_training_config(cfg, tmp_path)
    assert "<config>: data.mixture: " in str(err.value) and "data.data" not in str(err.value)


def test_one_file_under_two_text_fields_or_apart_is_no_overlap(tmp_path: Path) -> None:
    c = _jsonl(tmp_path / "sub" / "c.jsonl")
    d = _jsonl(tmp_path / "sub" / "d.jsonl")
    sources = [
        {"dataset": c, "name": "q", "text_field": "question"},
        {"dataset": c, "name": "a", "text_field": "answer"},
        {"dataset": d, "name": "d"},
        {"dataset": "org/hub", "data_files": ["sub/c.jsonl"], "name": "hub"},
    ]
    cfg = load_streaming_config(write(tmp_path / "sc.json", {"version": 2, "sources": sources}))
    assert [s.name for s in cfg.source_list()] == ["q", "a", "d", "hub"]


@pytest.mark.parametrize("second", ["./data/a.jsonl", "data//a.jsonl", "data/x/../a.jsonl"])
def test_one_hub_file_written_two_ways_is_an_overlap(tmp_path: Path, second: str) -> None:
    """A hub repository's file is compared by its path in the repository, normalised: written
    as data/a.jsonl in one source and ./data/a.jsonl in another it trained twice as often."""
    sources = [
        {"dataset": "org/ds", "data_files": ["data/a.jsonl"], "name": "a"},
        {"dataset": "org/ds", "data_files": [second], "name": "b"},
    ]
    with pytest.raises(ConfigError, match="sources 'a' and 'b' both read org/ds:data/a.jsonl"):
        load_streaming_config(write(tmp_path / "sc.json", {"version": 2, "sources": sources}))
