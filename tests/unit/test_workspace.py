"""The workspace layout and experiment-name checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmstream.errors import ConfigError
from lmstream.workspace import (
    WORKSPACE_ENV,
    ExperimentPaths,
    check_experiment_name,
    resolve_workspace,
)


def test_layout_matches_the_seed(tmp_path: Path) -> None:
    paths = ExperimentPaths.create(tmp_path, "runpod-1b-streaming")
    assert (
        paths.tokenizer_json == tmp_path / "artifacts/tokenizer/runpod-1b-streaming/tokenizer.json"
    )
    assert paths.merges_txt.name == "merges.txt" and paths.vocab_json.name == "vocab.json"
    assert paths.streaming_config == tmp_path / "runs/runpod-1b-streaming/streaming_config.json"
    assert paths.training_yaml.parent == paths.run_dir
    paths.ensure()
    assert paths.tokenizer_dir.is_dir() and paths.run_dir.is_dir()


def test_workspace_flag_env_default(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(WORKSPACE_ENV, str(tmp_path / "env"))
    assert resolve_workspace(tmp_path / "flag") == tmp_path / "flag"
    assert resolve_workspace(None) == tmp_path / "env"
    monkeypatch.delenv(WORKSPACE_ENV)
    monkeypatch.chdir(tmp_path)
    assert resolve_workspace(None) == tmp_path / "workspace"


@pytest.mark.parametrize("name", ["exp", "runpod-1b-streaming", "a.b_c-1", "X" * 128])
def test_good_experiment_names(name: str) -> None:
    assert check_experiment_name(name) == name


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("", "empty"),
        ("../escape", "path separator"),
        ("..", "'..'"),
        ("a..b", "'..'"),
        ("a/b", "path separator"),
        ("a\\b", "path separator"),
        ("/abs", "path separator"),
        (".hidden", "not a valid name"),
        ("sp ace", "not a valid name"),
        ("X" * 129, "not a valid name"),
    ],
)
def test_bad_experiment_names(name: str, words: str) -> None:
    with pytest.raises(ConfigError, match="--experiment") as info:
        check_experiment_name(name)
    assert words in str(info.value)
