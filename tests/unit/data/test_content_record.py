"""content_changes: which differences between a checkpoint's record of the data and the data now
a resume reports (lmstream.data.content_record)."""

from __future__ import annotations

from lmstream.data.content_record import content_changes


def _entry(files=(), remote=None, source="train"):
    return {"source": source, "files": [list(f) for f in files], "remote": remote}


def test_a_checkpoint_without_a_record_is_not_compared():
    assert content_changes(None, [_entry([("a", 1, 1)])]) == []
    assert content_changes([], [_entry([("a", 1, 1)])]) == []


def test_the_same_data_says_nothing():
    entry = _entry([("a", 10, 5)], remote=[["http://x/a", {"ETag": "1"}]])
    assert content_changes([entry], [entry]) == []


def test_each_kind_of_file_change_is_named():
    saved = [_entry([("a", 10, 5), ("gone", 1, 1)])]
    now = [_entry([("a", 12, 6), ("new", 1, 1)])]
    (line,) = content_changes(saved, now)
    assert "source 'train' changed" in line
    for part in ("gone is gone", "new is new", "a: 10 -> 12 bytes"):
        assert part in line
    (line,) = content_changes([_entry([("b", 10, 5)])], [_entry([("b", 10, 7)])])
    assert "b: modified (same size)" in line


def test_many_changed_files_are_shortened():
    saved = [_entry([(f"f{i}", 1, 1) for i in range(6)])]
    now = [_entry([(f"f{i}", 2, 1) for i in range(6)])]
    (line,) = content_changes(saved, now)
    assert "and 3 more file(s)" in line and "f3" not in line


def test_remote_identity_compared_only_when_known_both_times():
    saved = [_entry(remote=[["http://x/a", {"ETag": "1"}]])]
    assert content_changes(saved, [_entry(remote=None)]) == []  # offline now: not known
    (line,) = content_changes(saved, [_entry(remote=[["http://x/a", {"ETag": "2"}]])])
    assert "http://x/a: its content identity changed" in line


def test_one_line_per_changed_source_of_a_mixture():
    saved = [_entry([("a", 1, 1)], source="web"), _entry([("b", 1, 1)], source="code")]
    now = [_entry([("a", 1, 1)], source="web"), _entry([("b", 2, 1)], source="code"),
           _entry([("c", 1, 1)], source="added")]  # fmt: skip
    (line,) = content_changes(saved, now)
    assert "source 'code'" in line
