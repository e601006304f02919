"""A real loopback HTTP mirror for download tests: serves a directory with Range support and injected faults.

Only 127.0.0.1, an ephemeral port, one request at a time; the serving loop stops by itself after
`max_requests` requests or `max_seconds`, whichever comes first.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit


@dataclass
class Faults:
    """What the mirror does wrong, per path relative to its root."""

    drop_half: set[str] = field(default_factory=set)        # first GET: full length announced, half sent, closed
    ignore_range: bool = False                                # answer every Range request with the whole file
    statuses: dict[str, list[int]] = field(default_factory=dict)  # error statuses to answer first, in order


@dataclass(frozen=True)
class Logged:
    """One request the mirror answered."""

    method: str
    path: str
    range: str | None
    status: int


class Mirror:
    """`with Mirror(root) as mirror:` serves `root` at `mirror.url` until the block ends."""

    def __init__(self, root: Path, faults: Faults | None = None, max_requests: int = 100,
                 max_seconds: float = 60.0) -> None:
        self.root = root.resolve()
        self.faults = faults or Faults()
        self.max_requests, self.max_seconds = max_requests, max_seconds
        self.log: list[Logged] = []
        self._dropped: set[str] = set()
        self._stop = threading.Event()
        self._server = HTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.timeout = 0.05
        self._server.handle_error = lambda request, address: None  # a client hanging up is not news here
        self._thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def url(self) -> str:
        """http://127.0.0.1:<port>"""
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def gets(self, path: str) -> list[Logged]:
        """The GET requests of one path."""
        return [entry for entry in self.log if entry.method == "GET" and entry.path == path]

    def _serve(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        while not self._stop.is_set() and len(self.log) < self.max_requests and time.monotonic() < deadline:
            self._server.handle_request()

    def __enter__(self) -> Mirror:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._server.server_close()


def _handler_for(mirror: Mirror) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            """Keep test output quiet."""

        def do_HEAD(self) -> None:
            self._answer(body=False)

        def do_GET(self) -> None:
            self._answer(body=True)

        def _status(self, path: str, status: int, headers: dict[str, str] | None = None) -> None:
            mirror.log.append(Logged(self.command, path, self.headers.get("Range"), status))
            self.send_response(status)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            if status >= 400:
                self.send_header("Content-Length", "0")
            self.end_headers()

        def _answer(self, body: bool) -> None:
            path = unquote(urlsplit(self.path).path).lstrip("/")
            file = (mirror.root / path).resolve()
            if not file.is_relative_to(mirror.root) or not file.is_file():
                return self._status(path, 404)
            pending = mirror.faults.statuses.get(path)
            if body and pending:
                return self._status(path, pending.pop(0))
            data = file.read_bytes()
            requested = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
            if requested and not mirror.faults.ignore_range:
                first = int(requested.group(1))
                if first >= len(data):
                    return self._status(path, 416, {"Content-Range": f"bytes */{len(data)}"})
                self._status(path, 206, {"Content-Range": f"bytes {first}-{len(data) - 1}/{len(data)}",
                                         "Content-Length": str(len(data) - first)})
                payload = data[first:]
            else:
                self._status(path, 200, {"Content-Length": str(len(data))})
                payload = data
            if not body:
                return None
            if path in mirror.faults.drop_half and path not in mirror._dropped:
                mirror._dropped.add(path)
                payload = payload[: len(payload) // 2]
            self.wfile.write(payload)
            self.wfile.flush()
            return None

    return Handler
