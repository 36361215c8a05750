"""One commit per Hub dataset for a whole run, kept across resumes.

A Hub source's revision (none = ``main``, a branch, a tag) moves with every push. Read by name,
a run would read whatever the branch holds at each open: the validation set, the data survey
and the training loader of one start-up could each see another commit, and a resume after a
push would deal out other documents than the uninterrupted run (and maybe train on documents
that used to be held out). So, as ``git`` or ``datasets``' own module cache do, the revision
is resolved once, at a fresh start, to its commit (:func:`pin_sources`, on rank 0; the ranks
agree on the result, see ``train.setup``), and every read of the run asks for that commit
(:func:`reading_at` around the code that builds the data plans, :func:`pinned` where a plan's
source is made). Each checkpoint records the commits (:meth:`Pin.record`), so a resume reads
what the run started with even if the branch moved; a checkpoint without the record (older
lmstream) reads the branch as it is now, as it did before, is pinned from that resume on, and
its start-up line says the documents may differ from the ones the run read (``eval`` of it
says so too: :func:`moving_hub_sources`).

A commit that cannot be resolved at a fresh start (offline, a refused request) leaves the
source unpinned, as before, and says so; a recorded commit that the Hub no longer has (a
force-push removed it) stops the resume with :class:`PinnedCommitGone`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace

from lmstream.data.remote_identity import (
    CHECK_TIMEOUT_S,
    hub_commit,
    is_commit,
    unchecked_reason,
)
from lmstream.data.sources import SourceSpec
from lmstream.errors import CheckpointError

_SHORT = 7  # characters of a commit shown in messages, as git's short hashes


class PinnedCommitGone(CheckpointError):
    """The commit a checkpoint recorded for a Hub source is no longer on the Hub."""


@dataclass(frozen=True)
class Pin:
    """A Hub source of the run: ``dataset`` at ``revision`` (as given; None is ``main``) read
    at ``commit`` (None: not pinned, ``reason`` says why). ``recorded``: the commit comes from
    the checkpoint; ``branch_now``: where ``revision`` points now, when that differs;
    ``unrecorded_resume``: a resume whose checkpoint records no commit for the source (older
    lmstream, or a start that could not pin), so it may now read other files than the run did."""

    dataset: str
    revision: str | None
    commit: str | None
    recorded: bool = False
    branch_now: str | None = None
    reason: str | None = None
    unrecorded_resume: bool = False

    @property
    def key(self) -> tuple[str, str | None]:
        return (self.dataset, self.revision)

    def record(self) -> dict:
        """What a checkpoint keeps (plain values: trainer states load with weights_only)."""
        return {"dataset": self.dataset, "revision": self.revision, "commit": self.commit}

    def line(self) -> str:
        """The start-up line that says which commit the run reads."""
        rev = self.revision or "main"
        if self.commit is None:
            return (
                f"data: {self.dataset} at {rev}: not pinned to a commit ({self.reason}); a "
                f"resume after {rev} moves reads the new commit"
            )
        head = f"data: {self.dataset} at {rev} = commit {self.commit[:_SHORT]}"
        if self.unrecorded_resume:  # said, not refused: the branch may well not have moved
            return (
                f"{head} (pinned from this resume on; the checkpoint records no commit for it, "
                f"so if {rev} moved since it was saved this run now reads other documents)"
            )
        if not self.recorded:
            return f"{head} (pinned for this run)"
        if self.branch_now:
            return (
                f"{head} (pinned when the run started; the branch is now at "
                f"{self.branch_now[:_SHORT]})"
            )
        return f"{head} (pinned when the run started)"


def hub_sources(specs: Iterable[SourceSpec]) -> list[SourceSpec]:
    """The Hub dataset sources among ``specs``, once per (dataset, revision)."""
    found: dict[tuple[str, str | None], SourceSpec] = {}
    for spec in specs:
        if spec.is_hub:
            found.setdefault((spec.path, spec.revision), spec)
    return list(found.values())


def pin_sources(specs: Iterable[SourceSpec], recorded: list[dict] | None) -> tuple[Pin, ...]:
    """A pin for every Hub source: the checkpoint's commit where ``recorded`` has one (checked
    to still exist when the branch moved away from it), else the commit its revision resolves
    to now. ``recorded`` is None at a fresh start; on a resume it is the checkpoint's record
    ([] for a checkpoint without one), and a source it lacks is marked ``unrecorded_resume``.
    Makes one request per source (none for a revision that is a commit)."""
    saved = {(r["dataset"], r.get("revision")): r["commit"] for r in recorded or () if r["commit"]}
    pins = []
    for spec in hub_sources(specs):
        commit = saved.get((spec.path, spec.revision))
        if commit is not None:
            pins.append(_recorded(spec, commit))
            continue
        pin = _resolve(spec)
        # A resume without a record for the source: what the run read before is unknown, unless
        # its revision is itself a commit (which never moves).
        unknown = recorded is not None and pin.commit != spec.revision
        pins.append(replace(pin, unrecorded_resume=True) if unknown else pin)
    return tuple(pins)


def moving_hub_sources(specs: Iterable[SourceSpec]) -> list[SourceSpec]:
    """The Hub sources among ``specs`` that read a branch or tag, not a commit (outside
    :func:`reading_at`, or with no commit recorded): what they read moves with each push."""
    return [spec for spec in hub_sources(specs) if not is_commit(spec.revision)]


def recorded_pins(records: list[dict] | None) -> tuple[Pin, ...]:
    """A checkpoint's recorded commits as pins, without asking the Hub (what ``eval`` of that
    checkpoint reads: its validation documents, whatever the branch holds now)."""
    return tuple(
        Pin(r["dataset"], r.get("revision"), r["commit"], recorded=True)
        for r in records or ()
        if r.get("commit")
    )


def _resolve(spec: SourceSpec) -> Pin:
    try:
        return Pin(spec.path, spec.revision, hub_commit(spec.path, spec.revision))
    except Exception as err:  # offline, refused: the run goes on unpinned, as before
        return Pin(spec.path, spec.revision, None, reason=unchecked_reason(err))


def _recorded(spec: SourceSpec, commit: str) -> Pin:
    try:
        now = hub_commit(spec.path, spec.revision)
    except Exception:  # offline: the read itself will tell whether the commit is cached
        now = None
    if now != commit and not _commit_exists(spec.path, commit):
        rev = spec.revision or "main"
        raise PinnedCommitGone(
            f"cannot resume: {spec.path} has no commit {commit} any more (what {rev} pointed "
            "at when the run started; removed by a force-push?); the checkpoint's data position "
            "belongs to that commit: restore it on the Hub, or start a new run without --resume"
        )
    moved = now if now is not None and now != commit else None
    return Pin(spec.path, spec.revision, commit, recorded=True, branch_now=moved)


def _commit_exists(repo_id: str, commit: str) -> bool:
    """False only when the Hub says the commit does not exist (not when it cannot be asked)."""
    from huggingface_hub import HfApi

    try:
        HfApi().dataset_info(repo_id, revision=commit, timeout=CHECK_TIMEOUT_S)
    except Exception as err:
        return type(err).__name__ != "RevisionNotFoundError"
    return True


# The commits of the run being built; empty outside :func:`reading_at`. A process-wide table
# because the plans are made from (config, run folder) in many places (loader, validation set,
# survey); set only for the span of one run's building, then restored.
_ACTIVE: dict[tuple[str, str | None], str] = {}


@contextmanager
def reading_at(pins: Iterable[Pin]) -> Iterator[None]:
    """Within the block, :func:`pinned` sources read their pinned commits."""
    global _ACTIVE
    previous = _ACTIVE
    _ACTIVE = {pin.key: pin.commit for pin in pins if pin.commit}
    try:
        yield
    finally:
        _ACTIVE = previous


def pinned(spec: SourceSpec) -> SourceSpec:
    """``spec`` reading its pinned commit when one is active, else ``spec`` itself."""
    commit = _ACTIVE.get((spec.path, spec.revision)) if spec.is_hub else None
    return replace(spec, revision=commit) if commit else spec
