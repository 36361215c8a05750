"""A loopback HTTP file server with Range support and fault injection, for streaming tests.

``python -m http.server`` has no Range support, which fsspec's HTTP filesystem (used by
datasets for http(s) data files) requires. This server serves a folder or in-memory files on
127.0.0.1 (port 0, chosen by the OS) and can fail on purpose, at a rate or on given request
numbers: drop the connection, answer 500/503/429, stall past the client's read timeout, or send
a truncated body. Files are sent with an ETag (their content's sha1) unless ``etag=False``. Use it as a context manager::

    with FileServer(folder, faults=Faults(kinds=("drop",), on_requests={3, 5})) as server:
        url = server.url("data.jsonl")
"""

from __future__ import annotations

import hashlib
import random
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

FAULT_KINDS = ("drop", "500", "503", "429", "stall", "truncate")
_RANGE = re.compile(r"bytes=(\d*)-(\d*)$")


@dataclass
class Faults:
    """When and how requests fail. Request numbers count GET requests from 1."""

    kinds: tuple[str, ...] = ("drop",)  # one is drawn per faulty request
    rate: float = 0.0  # probability that a GET request fails
    on_requests: set[int] = field(default_factory=set)  # these GET requests fail
    stall_seconds: float = 5.0  # for "stall": sleep this long before answering
    max_faults: int | None = None  # stop injecting after this many
    files: frozenset[str] | None = None  # only requests for these files fail (None: any)
    seed: int = 0

    def __post_init__(self) -> None:
        unknown = set(self.kinds) - set(FAULT_KINDS)
        if unknown:
            raise ValueError(f"unknown fault kinds {sorted(unknown)}; known: {FAULT_KINDS}")
        self._rng = random.Random(self.seed)
        self.injected: list[tuple[int, str]] = []  # (request number, kind)

    def pick(self, number: int, name: str = "") -> str | None:
        if self.max_faults is not None and len(self.injected) >= self.max_faults:
            return None
        if self.files is not None and name not in self.files:
            return None
        if number in self.on_requests or (self.rate and self._rng.random() < self.rate):
            kind = self._rng.choice(self.kinds)
            self.injected.append((number, kind))
            return kind
        return None


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        # Clients hang up on purpose in these tests (timeouts, faults); don't print tracebacks.
        pass


class FileServer:
    """Serve ``root`` (a folder, or a {name: bytes} dict) on 127.0.0.1 in a background thread."""

    def __init__(
        self,
        root: str | Path | dict[str, bytes],
        faults: Faults | None = None,
        etag: bool = True,
    ):
        self.etag = etag  # False: a server that sends no ETag (nor Last-Modified)
        self.files = root if isinstance(root, dict) else None
        self.root = None if isinstance(root, dict) else Path(root)
        self.faults = faults or Faults()
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, Range header)
        self._lock = threading.Lock()
        self._gets = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ---- lifecycle

    def __enter__(self) -> FileServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        handler = type("Handler", (_Handler,), {"owner": self})
        self._server = _QuietServer(("127.0.0.1", 0), handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def port(self) -> int:
        assert self._server is not None, "server not started"
        return self._server.server_address[1]

    def url(self, name: str = "") -> str:
        return f"http://127.0.0.1:{self.port}/{name.lstrip('/')}"

    # ---- used by the handler

    def read(self, name: str) -> bytes | None:
        if self.files is not None:
            return self.files.get(name)
        path = (self.root / name).resolve()
        if self.root.resolve() not in path.parents or not path.is_file():
            return None
        return path.read_bytes()

    def next_get(self, name: str = "") -> tuple[int, str | None]:
        with self._lock:
            self._gets += 1
            return self._gets, self.faults.pick(self._gets, name)


class _Handler(BaseHTTPRequestHandler):
    owner: FileServer
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes: with Nagle on, a keep-alive client's delayed
    # ACK held each response back ~40 ms per write (137 ms per small file against 2 ms with
    # TCP_NODELAY), which is what real file servers set; faults are injected as before.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
        pass

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_GET(self) -> None:
        self._serve(body=True)

    def _serve(self, body: bool) -> None:
        owner = self.owner
        name = self.path.split("?", 1)[0].lstrip("/")
        owner.requests.append((self.command, name, self.headers.get("Range")))
        fault = owner.next_get(name)[1] if body else None
        data = owner.read(name)
        if data is None:
            self._status_only(404)
            return
        start, end = 0, len(data)
        status = 200
        rng = self.headers.get("Range")
        if rng:
            match = _RANGE.match(rng.strip())
            if not match or not (match.group(1) or match.group(2)):
                self._status_only(416)
                return
            if match.group(1):
                start = int(match.group(1))
                end = min(len(data), int(match.group(2)) + 1) if match.group(2) else len(data)
            else:
                start = max(0, len(data) - int(match.group(2)))
            if start >= len(data):
                self._status_only(416, {"Content-Range": f"bytes */{len(data)}"})
                return
            status = 206
        if fault is not None and self._inject(fault):
            return
        chunk = data[start:end]
        self.send_response(status)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(len(chunk)))
        self.send_header("Content-Type", "application/octet-stream")
        if self.owner.etag:  # as real file servers: it changes with the file's content
            self.send_header("ETag", f'"{hashlib.sha1(data).hexdigest()}"')
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(data)}")
        self.end_headers()
        if not body:
            return
        if fault == "truncate":
            self.wfile.write(chunk[: len(chunk) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(chunk)

    def _inject(self, fault: str) -> bool:
        """Apply a fault; True when the request is over (no normal answer follows)."""
        if fault == "drop":
            self.close_connection = True
            self.connection.shutdown(2)
            return True
        if fault in ("500", "503", "429"):
            self._status_only(int(fault), {"Retry-After": "0"} if fault != "500" else None)
            return True
        if fault == "stall":
            time.sleep(self.owner.faults.stall_seconds)
            self.close_connection = True
            return True
        return False  # "truncate" is applied while writing the body

    def _status_only(self, code: int, headers: dict[str, str] | None = None) -> None:
        self.send_response(code)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", "0")
        self.end_headers()
