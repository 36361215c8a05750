"""A loopback stand-in for the Hugging Face Hub's upload API, for `export --push-to-hub` tests.

It answers what huggingface_hub's ``create_repo``, ``create_branch`` and ``upload_folder`` ask
(huggingface_hub 0.2x-2.x, read from its hf_api.py and _commit_api.py):

    POST /api/repos/create                              {name, organization, visibility|private}
                                                        (409 when the repo exists, as the Hub)
    GET  /api/models/OWNER/NAME[/revision/REV]          repo info: id, private, sha
    POST /api/validate-yaml                             README.md metadata check
    POST /api/models/OWNER/NAME/branch/REV              create a branch
    POST /api/models/OWNER/NAME/preupload/REV           upload mode per file: "regular" here, so
                                                        every file travels base64 in the commit
    POST /api/models/OWNER/NAME/commit/REV              ndjson: a header line, one line per file

It also serves dataset repositories for streaming reads (``datasets`` 5.x with huggingface_hub
2.x), files given as ``server.datasets[repo_id] = {path: bytes}``:

    GET  /api/datasets/OWNER/NAME[/revision/REV]        info: id, sha (from the files: it moves
                                                        when they change), siblings
    GET  /api/datasets/OWNER/NAME/tree/REV[/DIR]        listing ({type, path, size, oid})
    POST /api/datasets/OWNER/NAME/paths-info/REV        {type, path, size, oid} of given paths
    HEAD/GET /datasets/OWNER/NAME/resolve/REV/PATH      a file, with Range (206); 404 with
                                                        X-Error-Code EntryNotFound when absent

Each version of a dataset's files it has served is kept as a commit (``server.commits[repo_id]
[sha] = {path: bytes}``), so a test that assigns new files to ``server.datasets[repo_id]`` moves
the branch: REV ``main`` (or any branch name) is the newest files, REV = an earlier version's sha
serves that version, and an unknown 40-hex REV answers 404 with X-Error-Code RevisionNotFound
(as the Hub does for a commit a force-push removed: ``del server.commits[repo_id][sha]``).
``refuse_dataset_info = N`` answers the next N dataset info requests 503 (a Hub that refuses).

Point a client at it with ``HF_ENDPOINT=server.url`` (and HF_HUB_OFFLINE unset). Received files
land in ``server.repos[repo_id][revision][path] = bytes``; every request's headers are kept so a
test can check the token was sent (and nowhere else). ``fail_commit_with`` answers the commit
with that HTTP status instead.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

DATASET_SHA = "d" * 40  # the commit of a dataset with no files (kept for older tests)


def dataset_sha(files: dict[str, bytes]) -> str:
    """The commit a stand-in dataset is at: it changes with its files, as a branch on the Hub
    moves with each commit (a client that keys a cache by it sees new content)."""
    if not files:
        return DATASET_SHA
    digest = hashlib.sha1()
    for path in sorted(files):
        digest.update(path.encode() + b"\0" + hashlib.sha1(files[path]).digest())
    return digest.hexdigest()


def uneven_dataset_files(
    lines_file: Path, first_sizes: list[int], reverse: bool = False
) -> dict[str, bytes]:
    """A JSON-lines corpus cut into ``data/train-{i}.jsonl`` files of ``first_sizes`` documents
    each, the last file taking the rest: uneven files, as Hub datasets are. ``reverse`` cuts the
    documents in reverse order (different content at the same paths: `main` after a push)."""
    lines = lines_file.read_bytes().splitlines(keepends=True)
    if reverse:
        lines.reverse()
    bounds = [0]
    for size in first_sizes:
        bounds.append(bounds[-1] + size)
    bounds.append(len(lines))
    return {
        f"data/train-{i}.jsonl": b"".join(lines[a:b])
        for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:], strict=True))
    }


class HubStandIn:
    def __init__(self, fail_commit_with: int | None = None):
        self.fail_commit_with = fail_commit_with
        self.repos: dict[str, dict[str, dict[str, bytes]]] = {}
        self.datasets: dict[str, dict[str, bytes]] = {}  # dataset repo id -> {path: bytes}
        self.commits: dict[str, dict[str, dict[str, bytes]]] = {}  # repo id -> sha -> files
        self.refuse_dataset_info = 0  # dataset info requests still to answer 503
        self.created: list[dict] = []  # create_repo payloads
        self.private: dict[str, bool] = {}  # visibility per repo (a test may add a repo)
        self.requests: list[
            tuple[str, str, dict[str, str], bytes]
        ] = []  # method, path, headers, body
        self._server: ThreadingHTTPServer | None = None

    def __enter__(self) -> HubStandIn:
        handler = type("Handler", (_Handler,), {"hub": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    hub: HubStandIn
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # as the Hub's servers: no ~40 ms delayed-ACK wait per reply

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _reply(self, status: int, payload: dict | list) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_HEAD(self) -> None:
        self.hub.requests.append((self.command, self.path, dict(self.headers), b""))
        self._dataset_file(body=False) or self._reply(404, {"error": "not in the stand-in"})

    def do_GET(self) -> None:
        self.hub.requests.append((self.command, self.path, dict(self.headers), b""))
        if self._dataset_file(body=True) or self._dataset_api():
            return
        parts = unquote(urlparse(self.path).path).strip("/").split("/")
        if parts[:2] == ["api", "models"] and len(parts) >= 4:
            repo_id = f"{parts[2]}/{parts[3]}"
            if repo_id in self.hub.repos:
                info = {"id": repo_id, "private": self.hub.private.get(repo_id, False)}
                return self._reply(200, info | {"sha": "0" * 40})
        self._reply(404, {"error": "not in the stand-in"})

    # ---- dataset reads

    def _dataset(
        self, parts: list[str], revision: str | None = None
    ) -> tuple[str, dict[str, bytes]] | None:
        """(repo id, files at ``revision``) for OWNER/NAME in ``parts``; None when the repo is
        unknown. An unknown commit answers 404 RevisionNotFound itself and returns None too."""
        repo_id = "/".join(parts[:2])
        files = self.hub.datasets.get(repo_id)
        if files is None or len(parts) < 2:
            return None
        versions = self.hub.commits.setdefault(repo_id, {})
        versions[dataset_sha(files)] = dict(files)  # the newest is a commit too, kept from now
        if revision is None or not re.fullmatch(r"[0-9a-f]{40}", revision):
            return repo_id, files  # main or another branch name: the newest files
        if revision not in versions:
            self._not_found("RevisionNotFound", f"Invalid rev id: {revision}")
            return None
        return repo_id, versions[revision]

    def _not_found(self, code: str, message: str = "") -> None:
        body = json.dumps({"error": message}).encode() if message else b""
        self.send_response(404)
        self.send_header("X-Error-Code", code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)

    def _entry(self, path: str, data: bytes | None) -> dict:
        if data is None:
            return {"type": "directory", "path": path, "oid": "0" * 40, "size": 0}
        return {"type": "file", "path": path, "size": len(data),
                "oid": hashlib.sha1(data).hexdigest()}  # fmt: skip

    def _dataset_api(self, body: bytes = b"") -> bool:
        """The dataset info, tree and paths-info endpoints; False when the path is not one."""
        parts = unquote(urlparse(self.path).path).strip("/").split("/")
        if parts[:2] != ["api", "datasets"] or "/".join(parts[2:4]) not in self.hub.datasets:
            return False
        action = parts[4] if len(parts) > 4 else "revision"
        found = self._dataset(parts[2:], parts[5] if len(parts) > 5 else None)
        if found is None:
            return True  # an unknown commit: answered
        repo_id, files = found
        if action == "revision" and self.hub.refuse_dataset_info > 0:
            self.hub.refuse_dataset_info -= 1
            self._reply(503, {"error": "stand-in refuses"})
        elif action == "revision":
            siblings = [{"rfilename": p} for p in sorted(files)]
            self._reply(200, {"id": repo_id, "sha": dataset_sha(files), "private": False,
                              "siblings": siblings, "cardData": {}, "tags": []})  # fmt: skip
        elif action == "tree":
            folder = "/".join(parts[6:])
            recursive = "recursive=true" in (urlparse(self.path).query or "").lower()
            entries, dirs = [], set()
            for path in sorted(files):
                if folder and not path.startswith(folder + "/"):
                    continue
                rest = path[len(folder) + 1 :] if folder else path
                if "/" in rest and not recursive:
                    dirs.add(f"{folder}/{rest.split('/')[0]}".lstrip("/"))
                    continue
                for k in range(rest.count("/")):  # the folders on the way, when recursive
                    dirs.add(f"{folder}/{'/'.join(rest.split('/')[: k + 1])}".lstrip("/"))
                entries.append(self._entry(path, files[path]))
            listing = [self._entry(d, None) for d in sorted(dirs)] + entries
            self._reply(200, listing)
        elif action == "paths-info":
            asked = json.loads(body or b"{}").get("paths", [])
            if isinstance(asked, str):
                asked = [asked]
            info = [self._entry(p, files[p]) for p in asked if p in files]
            info += [self._entry(p, None) for p in asked
                     if p not in files and any(f.startswith(p + "/") for f in files)]  # fmt: skip
            self._reply(200, info)
        else:
            self._reply(404, {"error": f"unknown dataset endpoint {action}"})
        return True

    def _dataset_file(self, body: bool) -> bool:
        """GET/HEAD /datasets/OWNER/NAME/resolve/REV/PATH, with Range; False for other paths."""
        parts = unquote(urlparse(self.path).path).strip("/").split("/")
        if parts[:1] != ["datasets"] or len(parts) < 6 or parts[3] != "resolve":
            return False
        known = "/".join(parts[1:3]) in self.hub.datasets
        found = self._dataset(parts[1:], parts[4]) if known else None
        if known and found is None:
            return True  # an unknown commit: answered
        data = found[1].get("/".join(parts[5:])) if found else None
        if data is None:
            self._not_found("EntryNotFound" if found else "RepoNotFound")
            return True
        start, end, status = 0, len(data), 200
        match = re.match(r"bytes=(\d*)-(\d*)$", self.headers.get("Range") or "")
        if match and (match.group(1) or match.group(2)):
            if match.group(1):
                start = int(match.group(1))
                end = min(len(data), int(match.group(2)) + 1) if match.group(2) else len(data)
            else:
                start = max(0, len(data) - int(match.group(2)))
            status = 206
        chunk = data[start:end]
        self.send_response(status)
        self.send_header("X-Repo-Commit", dataset_sha(found[1]))
        self.send_header("ETag", f'"{hashlib.sha1(data).hexdigest()}"')
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(len(chunk)))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(data)}")
        self.end_headers()
        if body:
            self.wfile.write(chunk)
        return True

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        path = unquote(urlparse(self.path).path)
        self.hub.requests.append((self.command, path, dict(self.headers), body))
        if path.startswith("/api/datasets/") and self._dataset_api(body):
            return
        parts = path.strip("/").split("/")
        if path == "/api/repos/create":
            payload = json.loads(body)
            self.hub.created.append(payload)
            repo_id = f"{payload['organization']}/{payload['name']}"
            if repo_id in self.hub.repos:
                error = {"error": "You already created this model repo"}
                return self._reply(409, error | {"url": f"{self.hub.url}/{repo_id}"})
            self.hub.repos[repo_id] = {"main": {}}
            private = payload.get("private") is True or payload.get("visibility") == "private"
            self.hub.private[repo_id] = private
            return self._reply(200, {"url": f"{self.hub.url}/{repo_id}", "name": repo_id})
        if path == "/api/validate-yaml":
            return self._reply(200, {"errors": [], "warnings": []})
        # api / models / OWNER / NAME / ACTION / REV...
        if len(parts) < 6 or parts[:2] != ["api", "models"]:
            return self._reply(404, {"error": f"unknown endpoint {path}"})
        repo_id, action, revision = f"{parts[2]}/{parts[3]}", parts[4], "/".join(parts[5:])
        repo = self.hub.repos.get(repo_id)
        if repo is None:
            return self._reply(404, {"error": "Repository not found"})
        if action == "branch":
            repo.setdefault(revision, dict(repo["main"]))
            return self._reply(200, {})
        if action == "preupload":
            files = json.loads(body)["files"]
            modes = [
                {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": None}
                for f in files
            ]
            return self._reply(200, {"files": modes})
        if action == "commit":
            if self.hub.fail_commit_with is not None:
                return self._reply(self.hub.fail_commit_with, {"error": "stand-in refuses"})
            if revision not in repo:
                return self._reply(404, {"error": f"Invalid rev id: {revision}"})
            for line in body.decode().splitlines():
                item = json.loads(line)
                if item["key"] == "file":
                    value = item["value"]
                    repo[revision][value["path"]] = base64.b64decode(value["content"])
            oid = f"{len(self.hub.requests):040x}"
            return self._reply(
                200,
                {"commitUrl": f"{self.hub.url}/{repo_id}/commit/{oid}", "commitOid": oid},
            )
        return self._reply(404, {"error": f"unknown action {action}"})
