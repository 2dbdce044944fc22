"""The failure handler in http mode (a load-balancing endpoint has no job queue): the bootstrap after a
real failure answers every HTTP request with the error, /ping healthy so requests keep arriving and read
it; PORT_HEALTH apart from PORT listens too."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from .conftest import ROOT, bootstrap_env


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get(url: str, data: bytes | None = None) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_bootstrap_failure_is_answered_over_http(tmp_path: Path) -> None:
    port, health = _free_port(), _free_port()
    env = bootstrap_env(WORKER_MODE="http", PORT=str(port), PORT_HEALTH=str(health),
                        WORKER_HTTP_HOST="127.0.0.1")
    with open(tmp_path / "out", "wb") as out, open(tmp_path / "err", "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "worker.bootstrap", "--manifest-url",
                                 (tmp_path / "missing.json").as_uri(), "--volume", str(tmp_path)],
                                stdout=out, stderr=err, env=env, cwd=ROOT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                status, ping = _get(f"http://127.0.0.1:{health}/ping")
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "err").read_text()
                time.sleep(0.2)
        line = json.loads((tmp_path / "out").read_text().strip().splitlines()[0])
        assert line["status"] == "failed" and line["phase"] == "fetch"
        assert status == 200 and ping["status"] == "failed" and ping["error"].startswith("fetch: ")
        for _ in range(2):
            status, body = _get(f"http://127.0.0.1:{port}/v1/audio/speech", data=b'{"input": "Hi."}')
            assert status == 503 and body["error"]["message"] == ping["error"]
            assert body["error"]["code"] == "worker_startup_failed" and "remedy:" in ping["error"]
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
