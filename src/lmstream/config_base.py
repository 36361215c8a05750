"""The building blocks every config section shares: strict sections and paths that resolve
against the folder of the file they were written in."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, ValidationInfo

EOT_TOKEN = "<|endoftext|>"  # the document separator, the one special token the data needs
PAD_TOKEN = "<|pad|>"
SPECIAL_TOKENS_DEFAULT = [EOT_TOKEN, PAD_TOKEN]
DEFAULT_ROPE_THETA = 10000.0


def _resolve_path(value: Path, info: ValidationInfo) -> Path:
    """Relative paths resolve against the folder of the file they were written in."""
    value = Path(value).expanduser()
    base = (info.context or {}).get("base_dir")
    if not value.is_absolute() and base is not None:
        value = Path(base) / value
    # normpath (not resolve): "a/../b" and "b" are the same file, symlinks stay as written.
    return Path(os.path.normpath(Path(value).absolute())) if base is not None else value


ResolvedPath = Annotated[Path, AfterValidator(_resolve_path)]


def _resolve_glob(value: str, info: ValidationInfo) -> str:
    """Like ResolvedPath for file globs and URLs (URLs and hub paths are left alone)."""
    if "://" in value:
        return value
    return str(_resolve_path(Path(value), info))


ResolvedGlob = Annotated[str, AfterValidator(_resolve_glob)]


class _Section(BaseModel):
    """Base for every section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


def _auto_or_bool(value: object) -> object:
    # One check instead of pydantic's one error per member of the union ("auto", bool), so a
    # bad value is one line naming the field.
    if value == "auto" or isinstance(value, bool):
        return value
    raise ValueError("expected true, false or auto")


AutoOrBool = Annotated[Literal["auto"] | bool, BeforeValidator(_auto_or_bool)]
