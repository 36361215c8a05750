"""What a resume may change in a mixture (train/state.py's checks through train/mixture_resume.py):
weights and the set of sources may change, with one line saying so; a kept source's own
settings may not; a one-source run (streaming_config.json version 1, data.train_shards) may
become a mixture; a version-2 data state of one source (before mixtures) still loads."""

from __future__ import annotations

import copy

import pytest
from tests.support.mixture import mixture_config, write_sources
from tests.support.training import tiny_training_config

from lmstream.config import StreamingConfig, parse_training_config
from lmstream.data.loader import build_train_loader
from lmstream.errors import CheckpointError
from lmstream.tokenizer import load_tokenizer
from lmstream.train.state import check_resume_config, check_resume_data_source


def _dump(data: dict) -> dict:
    sc = StreamingConfig.model_validate(data)
    return {"mode": "streaming", **sc.model_dump(mode="json", exclude={"experiment"})}


def _v2(*sources) -> dict:
    return _dump({"version": 2, "sources": list(sources)})


WEB = {"name": "web", "dataset": "HuggingFaceFW/fineweb-edu", "weight": 0.7}
CODE = {"name": "code", "dataset": "/data/code.jsonl", "weight": 0.3}


def test_streaming_weight_change_and_added_source_are_one_note():
    notes = check_resume_data_source(
        _v2(WEB, CODE),
        _v2(
            {**WEB, "weight": 0.5},
            CODE,
            {**CODE, "name": "math", "dataset": "/data/math.jsonl", "weight": 0.2},
        ),
    )
    assert len(notes) == 1
    assert "web 0.7 -> 0.5" in notes[0] and "added math (0.2)" in notes[0]
    assert "kept sources continue" in notes[0]
    assert check_resume_data_source(_v2(WEB, CODE), _v2(WEB, CODE)) == []


def test_streaming_kept_source_change_is_refused():
    with pytest.raises(CheckpointError, match="source code max_samples: None -> 100"):
        check_resume_data_source(_v2(WEB, CODE), _v2(WEB, {**CODE, "max_samples": 100}))
    with pytest.raises(CheckpointError, match="max_chars"):  # file-wide settings as before
        changed = _dump({"version": 2, "sources": [WEB, CODE], "max_chars": 10})
        check_resume_data_source(_v2(WEB, CODE), changed)


def test_renamed_source_is_refused():
    """A renamed source (the settings of a saved one under a new name) would restart from its
    first document and train on what it already trained on: refused, naming both names."""
    renamed = {**CODE, "name": "code2"}
    with pytest.raises(CheckpointError, match="code2.*renamed.*'code'"):
        check_resume_data_source(_v2(WEB, CODE), _v2(WEB, renamed))
    with pytest.raises(CheckpointError, match="code2.*renamed.*'code'"):  # with a weight change
        check_resume_data_source(_v2(WEB, CODE), _v2({**WEB, "weight": 0.1}, renamed))


def test_version_1_run_may_become_a_mixture():
    v1 = _dump({"dataset": "HuggingFaceFW/fineweb-edu"})
    notes = check_resume_data_source(v1, _v2({**WEB, "name": None}, CODE))
    assert len(notes) == 1 and "added code" in notes[0] and "fineweb-edu 1 -> 0.7" in notes[0]


@pytest.fixture(scope="module")
def mix(tmp_path_factory):
    root = tmp_path_factory.mktemp("mix")
    return root, write_sources(root, {"a": 120, "b": 40, "c": 60})


def test_files_mixture_changes_in_training_yaml(mix):
    root, paths = mix
    base = parse_training_config(mixture_config(root, paths, {"a": 0.5, "b": 0.5}), root)
    more = parse_training_config(mixture_config(root, paths, {"a": 0.5, "c": 0.5}), root)
    notes = check_resume_config(base, more)
    assert any("added c" in n and "removed b" in n for n in notes)
    renamed = {"a": paths["a"], "b2": paths["b"]}
    with pytest.raises(CheckpointError, match="b2.*renamed.*'b'"):
        check_resume_config(base, parse_training_config(
            mixture_config(root, renamed, {"a": 0.5, "b2": 0.5}), root))  # fmt: skip
    other = {**paths, "a": paths["a"] + paths["c"]}
    moved = parse_training_config(mixture_config(root, other, {"a": 0.5, "b": 0.5}), root)
    with pytest.raises(CheckpointError, match="data.mixture source a train_shards"):
        check_resume_config(base, moved)
    single = parse_training_config(
        tiny_training_config(root, 4, **{"data.train_shards": paths["a"]}), root
    )
    single.tokenizer = base.tokenizer
    notes = check_resume_config(single, parse_training_config(
        mixture_config(root, paths, {"a": 0.8, "b": 0.2}), root))  # fmt: skip
    assert any("a 1 -> 0.8" in n and "added b" in n for n in notes)


def test_version_2_one_source_state_still_resumes(mix, tmp_path):
    root, paths = mix
    cfg = parse_training_config(
        tiny_training_config(root, 4, **{"data.train_shards": paths["a"], "data.num_workers": 2}),
        root,
    )
    tok = load_tokenizer(cfg.tokenizer.tokenizer_json)
    loader = build_train_loader(cfg, tok, tmp_path)
    it = iter(loader)
    try:
        for _ in range(5):
            next(it)
        state = copy.deepcopy(loader.state_dict())
        want = next(it)
    finally:
        loader.close()
    state["version"] = 2  # as written before mixtures (the one-source layout is unchanged)
    again = build_train_loader(cfg, tok, tmp_path)
    again.load_state_dict(state)
    try:
        got = next(iter(again))
    finally:
        again.close()
    assert got.inputs.equal(want.inputs) and got.targets.equal(want.targets)
