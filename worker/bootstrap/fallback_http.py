"""After an unrecoverable failure in http mode (``WORKER_MODE=http``, a RunPod load-balancing endpoint):
answer every HTTP request with the error instead of crash-looping. Stdlib only: the bootstrap runs in the
slim image, before the env that holds the worker's HTTP server exists.

The same answers the worker's own http mode gives after a failed start (worker/serving/state.py):
``GET /ping`` 200 with ``{"status": "failed", "error"}`` (healthy, so the load balancer keeps sending
requests and they read why), every other request 503 with the error in OpenAI's shape. Listens on
``PORT`` (default 80) and, when it differs, ``PORT_HEALTH`` too, on ``WORKER_HTTP_HOST`` (default 0.0.0.0).
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

log = logging.getLogger("fallback")


class _Answer(BaseHTTPRequestHandler):
    message = ""
    protocol_version = "HTTP/1.1"

    def _send(self, status: int, body: dict) -> None:
        data = json.dumps(body, ensure_ascii=False).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _answer(self) -> None:
        length = self.headers.get("Content-Length", "")
        if length.isdigit():  # read the body so the connection stays usable; it is not needed
            remaining = int(length)
            while remaining > 0:
                chunk = self.rfile.read(min(remaining, 1 << 16))
                if not chunk:
                    break
                remaining -= len(chunk)
        if self.path.split("?", 1)[0] == "/ping":
            self._send(200, {"status": "failed", "error": self.message})
            return
        log.error("%s %s answered with the bootstrap failure", self.command, self.path[:100])
        self._send(503, {"error": {"message": self.message, "type": "server_error", "param": None,
                                   "code": "worker_startup_failed"}})

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _answer

    def log_message(self, *args: object) -> None:
        pass


class ErrorServer:
    """The listeners (PORT, and PORT_HEALTH when it differs), each on a daemon thread."""

    def __init__(self, message: str, env: Mapping[str, str]) -> None:
        host = env.get("WORKER_HTTP_HOST", "").strip() or "0.0.0.0"
        port = int(env.get("PORT", "").strip() or 80)
        ports = [port, int(env.get("PORT_HEALTH", "").strip() or port)]
        handler = type("Answer", (_Answer,), {"message": message})
        self.servers = [ThreadingHTTPServer((host, p), handler) for p in dict.fromkeys(ports)]
        for server in self.servers:
            server.daemon_threads = True

    def start(self) -> None:
        for server in self.servers:
            threading.Thread(target=server.serve_forever, daemon=True).start()
            log.error("answering every request on http://%s:%d with the failure", *server.server_address[:2])

    def stop(self) -> None:
        for server in self.servers:
            server.shutdown()
            server.server_close()


def serve_http_error(message: str, env: Mapping[str, str] | None = None) -> None:
    """Blocks, answering every request with ``message``."""
    server = ErrorServer(message, os.environ if env is None else env)
    server.start()
    threading.Event().wait()
