"""`lmstream export --push-to-hub OWNER/NAME`: upload an exported folder with huggingface_hub.

The token comes from where huggingface_hub looks (HF_TOKEN, `hf auth login`'s file); lmstream
never reads it into a message, a log or a file. HF_ENDPOINT is read at call time, so a Hub
mirror (or a test's stand-in) set after import is honoured. A failed upload is one line; the
local export stays where it was written.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from lmstream.errors import ConfigError, LmstreamError

# The Hub's rule for repo names: letters, digits, '-', '_', '.'; no '--' or '..'.
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


class HubUploadError(LmstreamError):
    """The upload failed; the local export is kept."""

    exit_code = 6


def check_repo_id(repo_id: str) -> str:
    if not _REPO_ID.match(repo_id) or "--" in repo_id or ".." in repo_id:
        raise ConfigError(
            f"--push-to-hub: expected OWNER/NAME (letters, digits, '-', '_', '.') "
            f"(given: {repo_id!r})"
        )
    return repo_id


def _scrub(text: str) -> str:
    """The error's first line, with the token (if a library echoed it) masked."""
    from huggingface_hub import get_token

    line = (text.strip().splitlines() or [""])[0]
    token = get_token()
    return line.replace(token, "***") if token else line


def push_folder(folder: Path, repo_id: str, *, private: bool, revision: str | None) -> str:
    """Create ``repo_id`` if needed (and branch ``revision``), upload every file of ``folder``
    in one commit; returns the commit URL."""
    from huggingface_hub import HfApi

    api = HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        # create_repo leaves an existing repo's visibility as it is: --private on a public
        # repo would publish what the user asked to keep private.
        if private and not api.repo_info(repo_id).private:
            raise HubUploadError(
                f"--private: {repo_id} already exists and is public; nothing was uploaded "
                f"(make it private on the Hub, or drop --private); the local export is kept "
                f"in {folder}"
            )
        if revision is not None:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        info = api.upload_folder(
            folder_path=str(folder),
            repo_id=repo_id,
            revision=revision,
            commit_message="Upload model exported by lmstream",
        )
    except HubUploadError:
        raise
    except Exception as exc:  # HTTP, offline mode, auth: all one line, the export kept
        reason = _scrub(str(exc)) or type(exc).__name__
        raise HubUploadError(
            f"--push-to-hub {repo_id}: upload failed ({type(exc).__name__}: {reason}); "
            f"the local export is kept in {folder}"
        ) from None
    return str(info.commit_url)
