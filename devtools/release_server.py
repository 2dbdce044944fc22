"""A static file server on 127.0.0.1 that serves a release directory the way GitHub serves assets.

GET and HEAD, ``Range: bytes=N-`` and ``bytes=N-M`` (206 with Content-Range), 416 past the end, 404 for
anything that is not a plain file directly inside the root (no directory listings, no path escapes),
HTTP/1.1 keep-alive, sendfile. It counts the bytes it served per file, so callers can check that an
install downloaded the archive once.

    with ReleaseServer(Path("build/release")) as srv:
        srv.url("manifest.json")
"""

from __future__ import annotations

import os
import re
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

_RANGE = re.compile(r"bytes=(\d+)-(\d*)$")


class ReleaseServer:
    def __init__(self, root: Path, host: str = "127.0.0.1", port: int = 0) -> None:
        self.root = Path(root).resolve()
        self.bytes_served: Counter[str] = Counter()
        self._lock = threading.Lock()
        handler = type("Handler", (_Handler,), {"server_ref": self})
        self._httpd = ThreadingHTTPServer((host, port), handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="release-server", daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def url(self, name: str) -> str:
        return f"{self.base_url}/{name}"

    def add_served(self, name: str, n: int) -> None:
        with self._lock:
            self.bytes_served[name] += n

    def start(self) -> ReleaseServer:
        self._thread.start()
        return self

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> ReleaseServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Handler(BaseHTTPRequestHandler):
    server_ref: ReleaseServer
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:  # quiet: callers report what matters
        pass

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_GET(self) -> None:
        self._serve(body=True)

    def _file(self) -> Path | None:
        name = unquote(urlsplit(self.path).path).lstrip("/")
        if not name or "/" in name or name.startswith("."):
            return None
        path = self.server_ref.root / name
        return path if path.is_file() else None

    def _serve(self, body: bool) -> None:
        path = self._file()
        if path is None:
            return self._empty(404)
        size = path.stat().st_size
        start, end = 0, size - 1
        header = self.headers.get("Range")
        if header:
            match = _RANGE.match(header.strip())
            if not match:
                return self._empty(416, size)
            start = int(match.group(1))
            end = min(int(match.group(2)), size - 1) if match.group(2) else size - 1
            if start >= size or start > end:
                return self._empty(416, size)
        length = end - start + 1
        self.send_response(206 if header else 200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(length))
        if header:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        if body:
            self._send(path, start, length)

    def _send(self, path: Path, start: int, length: int) -> None:
        sent = 0
        with open(path, "rb") as fh:
            try:
                while sent < length:
                    n = os.sendfile(self.connection.fileno(), fh.fileno(), start + sent, length - sent)
                    if n == 0:
                        break
                    sent += n
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True
        self.server_ref.add_served(path.name, sent)

    def _empty(self, code: int, size: int | None = None) -> None:
        self.send_response(code)
        if code == 416 and size is not None:
            self.send_header("Content-Range", f"bytes */{size}")
        self.send_header("Content-Length", "0")
        self.end_headers()
