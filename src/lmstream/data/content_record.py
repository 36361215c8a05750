"""What each source of a run holds, as recorded in its checkpoints, and what a resume says when
that changed since.

A checkpoint's data position (documents read, per source and worker) only means the same
documents while the data is the same. A resume after a local file was edited, appended to or
replaced, or after a URL or bucket started serving other bytes, continued at that position in
other data and said nothing. Hub datasets are exempt: a run reads its recorded commit
(lmstream.data.pinning), whatever the branch holds now.

The record is taken once at start-up (every checkpoint of the run carries it):

* local files: (path, size, modification time) of every file behind the source, as the
  validation cache keys them;
* http(s) and object-store sources: their ETag / Last-Modified / generation and size
  (lmstream.data.remote_identity), or None when they could not be checked (offline).

A difference is reported, not refused: appending documents to a corpus or copying it to another
machine (a new modification time) are legitimate, and the user decides; the run must not be
silent about it.
"""

from __future__ import annotations

import glob
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lmstream.config import TrainingConfig
    from lmstream.data.documents import DataPlan


def local_files(plan: DataPlan) -> list:
    """(path, size, mtime_ns) of the local files behind the plan, sorted: the files it reads.
    A text source's entries are read as the loader reads them (``sources.split_entry``,
    ``sources.is_data_file``): a ``NAME=PATH`` entry is PATH, a folder holds its data files
    only (not a clone's .git or a README), and a Hub dataset's relative data files are paths in
    its repository, not local ones. A token-shard folder keeps every file (its manifest and its
    shards)."""
    from lmstream.data.sources import is_data_file, split_entry

    found: set = set()
    for pattern in (*plan.token_paths, *plan.validation_token_paths):
        _add(found, pattern, lambda f: True)
    for spec in (plan.spec, plan.validation_spec):
        if spec is None:
            continue
        for entry in spec.data_files or [spec.path]:
            pattern = split_entry(entry)[1]
            if spec.is_hub and not Path(pattern).expanduser().is_absolute():
                continue  # a path in the dataset's repository
            _add(found, pattern, lambda f: is_data_file(f.name))
    return sorted(found)


def _add(found: set, pattern: str, in_folder: Callable[[Path], bool]) -> None:
    if "://" in pattern:
        return
    for match in glob.glob(str(Path(pattern).expanduser()), recursive=True):
        path = Path(match)
        files = [path] if path.is_file() else (f for f in path.rglob("*") if in_folder(f))
        for f in (f for f in files if f.is_file()):
            try:
                st = f.stat()
            except FileNotFoundError:  # removed since the listing (a download still writing)
                continue
            found.add((str(f), st.st_size, st.st_mtime_ns))


def source_contents(cfg: TrainingConfig, run_dir: Path) -> list[dict]:
    """One entry per source of the run: {"source", "files", "remote"} (module docstring)."""
    from lmstream.data.mixture_plan import resolve_sources
    from lmstream.data.remote_identity import remote_identity

    record = []
    for source in resolve_sources(cfg, Path(run_dir)):
        plan = source.plan
        specs = [s for s in (plan.spec, plan.validation_spec) if s is not None and not s.is_hub]
        # Each spec alone: a validation URL that cannot be checked (no ETag) leaves the
        # training URLs' record, which a resume compares name by name.
        known = [r for r in map(remote_identity, ([s] for s in dict.fromkeys(specs)))
                 if r.unknown is None]  # fmt: skip
        parts = [list(p) for r in known for p in r.parts] if known or not specs else None
        files = [list(f) for f in local_files(plan)]
        record.append({"source": source.name, "files": files, "remote": parts})
    return record


def content_changes(saved: list[dict] | None, current: list[dict]) -> list[str]:
    """One line per source whose content differs from the checkpoint's record. A checkpoint
    without a record (an older lmstream) and a source that could not be checked now or then
    say nothing here: the first cannot be compared, the second is said by the validation set."""
    if not saved:
        return []
    before = {entry["source"]: entry for entry in saved}
    lines = []
    for entry in current:
        old = before.get(entry["source"])
        if old is None:
            continue  # a source added to a mixture: the mixture's own resume notes say so
        what = _file_changes(old["files"], entry["files"])
        if old["remote"] is not None and entry["remote"] is not None:
            what += _remote_changes(old["remote"], entry["remote"])
        if what:
            lines.append(
                f"data: source {entry['source']!r} changed since this checkpoint was written "
                f"({'; '.join(what)}); training continues at the checkpoint's position in the "
                "data as it is now, which may not be the documents the uninterrupted run read"
            )
    return lines


def _file_changes(old: list, new: list) -> list[str]:
    before = {path: (size, mtime) for path, size, mtime in old}
    after = {path: (size, mtime) for path, size, mtime in new}
    what = []
    for path in sorted(before.keys() - after.keys()):
        what.append(f"{path} is gone")
    for path in sorted(after.keys() - before.keys()):
        what.append(f"{path} is new")
    for path in sorted(before.keys() & after.keys()):
        (size0, mtime0), (size1, mtime1) = before[path], after[path]
        if size0 != size1:
            what.append(f"{path}: {size0:,} -> {size1:,} bytes")
        elif mtime0 != mtime1:
            what.append(f"{path}: modified (same size)")
    return _shortened(what)


def _remote_changes(old: list, new: list) -> list[str]:
    before: dict[str, Any] = {name: value for name, value in old}
    after: dict[str, Any] = {name: value for name, value in new}
    return _shortened(
        [f"{name}: its content identity changed" for name in sorted(after)
         if name in before and before[name] != after[name]]
    )  # fmt: skip


def _shortened(what: list[str], keep: int = 3) -> list[str]:
    if len(what) <= keep:
        return what
    return [*what[:keep], f"and {len(what) - keep} more file(s)"]
