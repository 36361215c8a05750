"""Sources in object storage: ``s3://``, ``gs://`` and ``hf://`` files, globs and folders.

Large runs keep their data in a bucket (thousands of ranks reading the Hub hit its rate limits).
These URLs are read through fsspec like local files: the same raw-lines reader, one shard per
file, the same retries and the same exact positions. Credentials come from each library's usual
environment (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_ENDPOINT_URL`` or
``~/.aws`` for s3fs, ``GOOGLE_APPLICATION_CREDENTIALS`` for gcsfs, ``HF_TOKEN`` for the Hub), so
nothing secret is written into streaming_config.json. s3fs and gcsfs are optional extras
(``pip install 'lmstream[s3]'``, ``'lmstream[gcs]'``); without them the source fails in one line
that says which to install.
"""

from __future__ import annotations

import glob
from collections.abc import Callable

from lmstream.data.stream import first_line
from lmstream.errors import DataSourceError

# URL scheme -> the extra that brings its fsspec filesystem (None: a core dependency has it).
_EXTRAS = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs", "hf": None}


def is_object_store(path: str) -> bool:
    """True for ``s3://``, ``gs://``/``gcs://`` and ``hf://`` URLs."""
    scheme, sep, _ = path.partition("://")
    return bool(sep) and scheme.lower() in _EXTRAS


def filesystem(url: str):
    """The fsspec filesystem for ``url``'s scheme; one line naming the extra when it is missing."""
    import fsspec

    scheme = url.partition("://")[0].lower()
    try:
        return fsspec.filesystem(scheme)
    except ImportError:
        extra = _EXTRAS.get(scheme)
        install = f"pip install 'lmstream[{extra}]'" if extra else "pip install huggingface_hub"
        raise DataSourceError(
            f"{url}: reading {scheme}:// needs its fsspec filesystem, not installed here; "
            f"run: {install}"
        ) from None


def expand(
    url: str,
    is_data_file: Callable[[str], bool],
    transient: Callable[[BaseException], bool],
) -> list[str]:
    """The files of one object-store URL: a file, a glob (sorted), or a folder (recursive, only
    its data files). Errors that may pass (timeouts, 5xx) are re-raised as they
    are, for the caller's retry; the others become one DataSourceError line."""
    fs = filesystem(url)
    scheme = url.partition("://")[0]
    try:
        if glob.has_magic(url):
            found = sorted(fs.glob(url))
            if not found:
                raise DataSourceError(f"{url}: no files match this pattern")
        elif fs.isdir(url):
            found = sorted(f for f in fs.find(url) if is_data_file(f))
            if not found:
                raise DataSourceError(
                    f"{url}: folder holds no jsonl/json/parquet/txt/csv files (optionally .gz/.zst)"
                )
        else:
            # info(), not isfile(): isfile() reads a refusal (403) as "no such file"
            try:
                fs.info(url)
            except FileNotFoundError:
                raise DataSourceError(
                    f"{url}: file not found; check the bucket and the path"
                ) from None
            found = [url]
    except DataSourceError:
        raise
    except Exception as err:
        if transient(err):
            raise
        raise DataSourceError(
            f"{url}: cannot list the source ({type(err).__name__}: {first_line(str(err))}); "
            "check the URL and "
            "the credentials in the environment"
        ) from None
    # fsspec lists paths without their scheme; the readers need it back to pick the filesystem
    return [f if "://" in f else f"{scheme}://{f}" for f in found]
