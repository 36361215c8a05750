"""Errors that the CLI turns into a clear message and a non-zero exit code, without a traceback.

Library code raises these for problems the *user* can fix (bad config, missing file, unknown
dataset); anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class LmstreamError(Exception):
    """A problem the user can fix. ``str(err)`` is the whole message shown to them."""

    exit_code = 1


class ConfigError(LmstreamError):
    """An invalid configuration file or flag. One line per problem, exit code 2."""

    exit_code = 2

    def __init__(self, problems: list[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


class DataSourceError(LmstreamError):
    """A data source that cannot be opened or read (after retries)."""

    exit_code = 3


class CheckpointError(LmstreamError):
    """A checkpoint that is missing, incomplete, corrupted or incompatible."""

    exit_code = 4
