"""A loopback HTTP server for download tests: 127.0.0.1, port 0, Range support, fault injection.

It serves in-memory files and stops by itself after ``lifetime`` seconds even if a test
forgets to close it (the serving loop is bounded). Faults per path:
- ``cut_once[path] = n``: send the headers for the whole body, then only ``n`` bytes, and drop
  the connection (once);
- ``corrupt[path] = bytes``: serve these bytes instead of the real file;
- ``statuses[path] = [503, ...]``: answer with these statuses first;
- ``ignore_range``: answer ranged requests with the whole body (200).
"""

from __future__ import annotations

import base64
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, HTTPServer


@dataclass
class Request:
    path: str
    range: str | None
    authorization: str | None
    query: str


@dataclass
class Loopback:
    files: dict[str, bytes]
    basic_auth: str | None = None  # "user:password" the server requires, if any
    lifetime: float = 60.0
    cut_once: dict[str, int] = field(default_factory=dict)
    corrupt: dict[str, bytes] = field(default_factory=dict)
    statuses: dict[str, list[int]] = field(default_factory=dict)
    ignore_range: bool = False
    requests: list[Request] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self.httpd = HTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.timeout = 0.05
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{name}"

    def paths(self) -> list[str]:
        return [r.path for r in self.requests]

    def _serve(self) -> None:
        deadline = time.monotonic() + self.lifetime
        while not self._stop.is_set() and time.monotonic() < deadline:
            self.httpd.handle_request()
        self.httpd.server_close()

    def __enter__(self) -> Loopback:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:  # keep test output clean
                pass

            def _status(self, code: int, headers: dict[str, str] | None = None) -> None:
                self.send_response(code)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", "0")
                self.send_header("Connection", "close")
                self.end_headers()
                self.close_connection = True

            def do_GET(self) -> None:  # noqa: N802
                split = urllib.parse.urlsplit(self.path)
                path = urllib.parse.unquote(split.path.lstrip("/"))
                server.requests.append(Request(path, self.headers.get("Range"),
                                               self.headers.get("Authorization"), split.query))
                if server.basic_auth is not None:
                    token = base64.b64encode(server.basic_auth.encode()).decode()
                    if self.headers.get("Authorization") != f"Basic {token}":
                        return self._status(401)
                queued = server.statuses.get(path)
                if queued:
                    return self._status(queued.pop(0))
                body = server.corrupt.get(path, server.files.get(path))
                if body is None:
                    return self._status(404)
                self._send_body(path, body)

            def _send_body(self, path: str, body: bytes) -> None:
                start = 0
                ranged = self.headers.get("Range")
                if ranged and not server.ignore_range:
                    start = int(ranged.removeprefix("bytes=").split("-")[0])
                    if start >= len(body):
                        return self._status(416, {"Content-Range": f"bytes */{len(body)}"})
                payload = body[start:]
                self.send_response(206 if start or (ranged and not server.ignore_range) else 200)
                self.send_header("Content-Length", str(len(payload)))
                if ranged and not server.ignore_range:
                    self.send_header("Content-Range",
                                     f"bytes {start}-{len(body) - 1}/{len(body)}")
                self.send_header("Connection", "close")
                self.end_headers()
                cut = server.cut_once.pop(path, None)
                self.wfile.write(payload if cut is None else payload[:cut])
                self.wfile.flush()
                self.close_connection = True

        return Handler
