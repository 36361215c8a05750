"""local_files / source_contents: which files a source's record holds (what a resume compares,
and what the validation cache keys by). The files a source reads, and only those."""

from __future__ import annotations

from lmstream.data.content_record import local_files
from lmstream.data.documents import DataPlan
from lmstream.data.sources import SourceSpec


def _paths(plan: DataPlan) -> list[str]:
    return [path for path, _size, _mtime in local_files(plan)]


def test_named_split_data_files_are_recorded(tmp_path):
    # streaming_config.json / orchestrate --data-files: "train=PATH", "validation=PATH"
    train, val = tmp_path / "train.jsonl", tmp_path / "val.jsonl"
    train.write_text('{"text": "a"}\n')
    val.write_text('{"text": "b"}\n')
    spec = SourceSpec(path=str(train), data_files=(f"train={train}", f"validation={val}"))
    plan = DataPlan("text", spec, validation="split", validation_spec=spec,
                    validation_split="validation")  # fmt: skip
    assert _paths(plan) == [str(train), str(val)]


def test_a_hub_datasets_repository_paths_are_not_local_files(tmp_path, monkeypatch):
    # data_files of a Hub dataset are paths in its repository, not in the working directory
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train-0.parquet").write_bytes(b"unrelated local file")
    monkeypatch.chdir(tmp_path)
    spec = SourceSpec(path="someone/some-dataset", data_files=("data/train-*.parquet",))
    assert spec.is_hub
    assert _paths(DataPlan("text", spec)) == []


def test_a_folder_source_records_its_data_files_only(tmp_path):
    # a dataset cloned with git: .git changes with every `git status`/`git fetch`, and a
    # README is not read; neither is the source's content
    folder = tmp_path / "corpus"
    (folder / ".git").mkdir(parents=True)
    (folder / ".git" / "index").write_bytes(b"x")
    (folder / "README.md").write_text("about")
    (folder / "part-0.jsonl").write_text('{"text": "a"}\n')
    spec = SourceSpec.from_files([str(folder)])
    assert _paths(DataPlan("text", spec)) == [str(folder / "part-0.jsonl")]


def test_a_token_shard_folder_keeps_every_file(tmp_path):
    folder = tmp_path / "tokens"
    folder.mkdir()
    for name in ("manifest.json", "shard-00000.bin"):
        (folder / name).write_bytes(b"x")
    paths = _paths(DataPlan("tokens", token_paths=(str(folder),)))
    assert paths == sorted(str(folder / n) for n in ("manifest.json", "shard-00000.bin"))


def test_a_hub_datasets_absolute_local_data_files_are_recorded(tmp_path):
    local = tmp_path / "extra.jsonl"
    local.write_text('{"text": "a"}\n')
    spec = SourceSpec(path="someone/some-dataset", data_files=(f"train={local}",))
    assert _paths(DataPlan("text", spec)) == [str(local)]
