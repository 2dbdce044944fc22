"""A worker in http mode that cannot start stays up and answers every HTTP request with the failure,
through production's entry point (`WORKER_MODE=http python -m worker`): the line it logged, naming the
phase, as a 503 in OpenAI's shape (the native route: ``{"error": line}``), ``/ping`` on PORT_HEALTH
apart from PORT. Settings it cannot serve without (WORKER_MODE, PORT) end the process with the line."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from jobkit import free_port, tiny_env

ROOT = Path(__file__).resolve().parents[3]
STARTUP_S = 180


def _request(url: str, body: dict | None = None) -> tuple[int, dict]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def _worker(tmp_path: Path, **env: str) -> tuple[subprocess.Popen, Path, int, int]:
    port, health = free_port(), free_port()
    log_path = tmp_path / "worker.log"
    full = {**os.environ, **tiny_env(), "PYTHONPATH": str(ROOT), "WORKER_VOLUME": str(tmp_path / "vol"),
            "WORKER_DEVICE": "cpu", "WORKER_MODE": "http", "PORT": str(port), "PORT_HEALTH": str(health),
            "WORKER_HTTP_HOST": "127.0.0.1", **env}
    for name in ("RUNPOD_WEBHOOK_GET_JOB", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        full.pop(name, None)
    with open(log_path, "wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "worker"], cwd=tmp_path, env=full, stdout=log,
                                   stderr=subprocess.STDOUT)
    return process, log_path, port, health


def test_a_failed_start_is_answered_to_every_request(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "f5.safetensors"
    process, log_path, port, health = _worker(tmp_path, F5_CKPT=str(missing))
    try:
        deadline = time.monotonic() + STARTUP_S
        while True:
            assert process.poll() is None, log_path.read_text()[-3000:]
            try:
                status, ping = _request(f"http://127.0.0.1:{health}/ping")
                if ping.get("status") == "failed":
                    break
            except (OSError, ValueError):
                pass
            assert time.monotonic() < deadline, log_path.read_text()[-3000:]
            time.sleep(0.3)
        line = re.search(r"worker startup failed in models: .*", log_path.read_text()).group(0)
        assert f"F5_CKPT='{missing}'" in line and "(remedy: " in line
        assert status == 200 and ping["status"] == "failed" and ping["error"] == line
        for _ in range(2):  # every request, not just the first
            status, body = _request(f"http://127.0.0.1:{port}/v1/audio/speech",
                                    {"model": "f5-tts", "input": "Hi.", "voice": "default"})
            assert status == 503 and body["error"]["message"] == line
            assert body["error"]["code"] == "worker_startup_failed"
        status, body = _request(f"http://127.0.0.1:{port}/v1/jobs", {"input": {"task": "voices"}})
        assert status == 503 and body == {"error": line}
        status, _ = _request(f"http://127.0.0.1:{health}/v1/models")
        assert status == 404  # the health port serves /ping only
        assert log_path.read_text().count(line) == 1  # logged once
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.mark.parametrize(("env", "says"), [
    ({"WORKER_MODE": "grpc"}, "worker startup failed in config: WORKER_MODE='grpc' must be one of queue, "
                              "http (remedy: "),
    ({"PORT": "eighty"}, "worker startup failed in config: PORT='eighty' is not an integer (remedy: "),
])
def test_settings_it_cannot_serve_without_end_the_process(tmp_path: Path, env: dict, says: str) -> None:
    process, log_path, _, _ = _worker(tmp_path, **env)
    assert process.wait(timeout=120) == 2
    assert says in log_path.read_text()
