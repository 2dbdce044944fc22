"""The failure handler: a local HTTP server speaking RunPod's worker protocol (job-take, job-done,
ping) hands out jobs; the stdlib loop, the real runpod SDK, and the bootstrap after a real failure must
each answer them with the error."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from worker.bootstrap.fallback import ErrorLoop

from .conftest import ROOT, bootstrap_env


class JobQueue:
    def __init__(self, jobs: list[dict[str, Any]]) -> None:
        self.jobs = list(jobs)
        self.done: dict[str, Any] = {}
        self.takes: list[dict[str, Any]] = []
        self.pings = 0
        self.lock = threading.Lock()
        handler = type("H", (_Handler,), {"queue": self})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def env(self) -> dict[str, str]:
        return {"RUNPOD_WEBHOOK_GET_JOB": f"{self.base}/v2/ep/job-take/$ID?gpu=H200",
                "RUNPOD_WEBHOOK_POST_OUTPUT": f"{self.base}/v2/ep/job-done/$RUNPOD_POD_ID/$ID?gpu=H200",
                "RUNPOD_WEBHOOK_PING": f"{self.base}/v2/ep/ping/$RUNPOD_POD_ID?gpu=H200",
                "RUNPOD_PING_INTERVAL": "1000", "RUNPOD_POD_ID": "pod-7", "RUNPOD_AI_API_KEY": "key-1"}

    def wait_done(self, n: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while len(self.done) < n and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(self.done) >= n, f"only {len(self.done)} of {n} jobs answered"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class _Handler(BaseHTTPRequestHandler):
    queue: JobQueue
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:
        pass

    def _reply(self, code: int, body: bytes = b"", ctype: str = "application/json") -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        q = self.queue
        url = urlsplit(self.path)
        if self.headers.get("Authorization") != "key-1":
            return self._reply(401)
        if "/ping/" in url.path:
            with q.lock:
                q.pings += 1
            return self._reply(200, b"{}")
        if "/job-take/" not in url.path and "/job-take-batch/" not in url.path:
            return self._reply(404)
        with q.lock:
            q.takes.append({"path": url.path, "query": parse_qs(url.query)})
            job = q.jobs.pop(0) if q.jobs else None
        if job is None:
            time.sleep(0.1)  # the real queue long-polls
            return self._reply(204)
        body = json.dumps([job] if "/job-take-batch/" in url.path else job).encode()
        return self._reply(200, body)

    def do_POST(self) -> None:
        q = self.queue
        url = urlsplit(self.path)
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if "/job-done/" in url.path and self.headers.get("Authorization") == "key-1":
            job_id = url.path.rsplit("/", 1)[-1]
            with q.lock:
                q.done[job_id] = json.loads(body)
            return self._reply(200, b"{}")
        return self._reply(404)


@pytest.fixture
def jobs() -> Iterator[JobQueue]:
    q = JobQueue([{"id": "job-a", "input": {"text": "hi"}}, {"id": "job-b", "input": {}}])
    yield q
    q.close()


def test_stdlib_loop_answers_every_job(jobs: JobQueue) -> None:
    loop = ErrorLoop("download: part x: HTTP 404 (remedy: upload it)", jobs.env())
    assert loop.run(max_jobs=2) == 2
    assert jobs.done == {"job-a": {"error": "download: part x: HTTP 404 (remedy: upload it)"},
                         "job-b": {"error": "download: part x: HTTP 404 (remedy: upload it)"}}
    assert jobs.takes[0]["path"] == "/v2/ep/job-take/pod-7"
    assert jobs.takes[0]["query"]["job_in_progress"] == ["0"] and jobs.takes[0]["query"]["gpu"] == ["H200"]


def _serve_failure(jobs: JobQueue, tmp_path: Path, **env: str) -> subprocess.Popen[bytes]:
    full = bootstrap_env(**jobs.env(), **env)
    # Files, not pipes: the SDK logs a lot and may start children that would hold a pipe open.
    with open(tmp_path / "out", "wb") as out, open(tmp_path / "err", "wb") as err:
        return subprocess.Popen([sys.executable, "-m", "worker.bootstrap", "--manifest-url",
                                 (tmp_path / "missing.json").as_uri(), "--volume", str(tmp_path)],
                                stdout=out, stderr=err, env=full, cwd=ROOT, start_new_session=True)


@pytest.mark.parametrize("sdk", ["stdlib", "runpod-sdk"])
def test_bootstrap_failure_is_served_to_jobs(jobs: JobQueue, tmp_path: Path, sdk: str) -> None:
    if sdk == "runpod-sdk":
        pytest.importorskip("runpod")
    # The stdlib path is forced by hiding the SDK: a directory named runpod that is not a package.
    env = {} if sdk == "runpod-sdk" else {"PYTHONPATH": f"{ROOT}{os.pathsep}{_hide_runpod(tmp_path)}",
                                          "PYTHONNOUSERSITE": "1"}
    proc = _serve_failure(jobs, tmp_path, **env)
    try:
        jobs.wait_done(2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    out, err = (tmp_path / "out").read_text(), (tmp_path / "err").read_text()
    first = json.loads(out.strip().splitlines()[0])
    assert first["status"] == "failed" and first["phase"] == "fetch"
    for answer in jobs.done.values():
        assert answer["error"].startswith("fetch: ") and "remedy:" in answer["error"]
    if sdk == "stdlib":
        assert "runpod SDK not installed" in err


def _hide_runpod(tmp_path: Path) -> Path:
    shadow = tmp_path / "shadow"
    (shadow / "runpod").mkdir(parents=True)
    (shadow / "runpod" / "__init__.py").write_text("raise ImportError('hidden for this test')\n")
    return shadow


def test_no_fallback_in_plain_cli_use(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "worker.bootstrap", "--manifest-url",
                           (tmp_path / "missing.json").as_uri(), "--volume", str(tmp_path)],
                          capture_output=True, text=True, env=bootstrap_env(), cwd=ROOT, timeout=60)
    assert proc.returncode == 12  # exits at once: no job loop without RUNPOD_WEBHOOK_GET_JOB
    assert json.loads(proc.stdout.strip().splitlines()[-1])["status"] == "failed"
