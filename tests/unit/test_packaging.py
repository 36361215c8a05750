"""pyproject.toml: what the main set-up command installs covers every lmstream command, and the
README names what each extra adds."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]


def _names(requirements: list[str]) -> set[str]:
    return {re.split(r"[<>=!~\[ ;]", r, maxsplit=1)[0].lower() for r in requirements}


def test_export_needs_no_extra():
    # scripts/demo.sh (the main set-up) installs the package without extras; `lmstream export`
    # imports transformers.
    assert "transformers" in _names(_project()["dependencies"])


def test_the_readme_says_what_each_extra_adds():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for extra, requirements in _project()["optional-dependencies"].items():
        assert f"`{extra}`" in readme or f"[{extra}]" in readme, extra
        for name in _names(requirements):
            assert name in readme, (extra, name)
