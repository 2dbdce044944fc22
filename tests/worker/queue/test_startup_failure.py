"""A worker that cannot start stays up and answers every job with the failure (worker/queue/failure.py).

Through production's entry point (`python -m worker`) on runpod's real local API (`--rp_serve_api`):
a model path that does not exist, a hub that refuses, malformed WORKER_*/F5_* variables, a checkpoint
that does not load. Each job's error is the line the worker logged, naming the phase, the cause and the
remedy; the worker keeps answering. In-process: the classification (a CUDA fault asks for a fresh
worker) and what runpod's own job runner makes of the answer (``stopPod``)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from jobkit import free_port, tiny_env, wait_for_local_api

from worker.engine.models import ModelError
from worker.queue import failure
from worker.settings import SettingsError

ROOT = Path(__file__).resolve().parents[3]
STARTUP_S = 180


def _post(base: str, path: str, body: object) -> dict:
    request = urllib.request.Request(base + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


class FailingWorker:
    """`python -m worker --rp_serve_api` with the given environment, its log kept."""

    def __init__(self, tmp_path: Path, **env: str) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp_path / "worker.log"
        full = {**os.environ, **tiny_env(), "PYTHONPATH": str(ROOT), "WORKER_VOLUME": str(tmp_path / "vol"),
                "WORKER_DEVICE": "cpu", "UVICORN_LOG_LEVEL": "warning", **env}
        for name in ("RUNPOD_WEBHOOK_GET_JOB", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
            full.pop(name, None)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "worker", "--rp_serve_api", "--rp_api_port", str(self.port),
                 "--rp_api_host", "127.0.0.1"], cwd=tmp_path, env=full, stdout=log, stderr=subprocess.STDOUT)

    def wait_up(self) -> None:
        wait_for_local_api(self.base, self.proc, STARTUP_S, self.log)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def worker_with(tmp_path: Path) -> Iterator:
    started: list[FailingWorker] = []

    def start(**env: str) -> FailingWorker:
        w = FailingWorker(tmp_path, **env)
        started.append(w)
        w.wait_up()
        return w

    yield start
    for w in started:
        w.stop()


def _answers_every_job_with_its_logged_line(w: FailingWorker) -> str:
    first = _post(w.base, "/runsync", {"input": {"text": "Hello.", "ref_audio": "x"}})
    second = _post(w.base, "/runsync", {"input": {"task": "voices"}})
    assert first["status"] == "FAILED" and second["status"] == "FAILED", (first, second)
    assert first["error"] == second["error"]
    error = first["error"]
    assert re.fullmatch(r"worker startup failed in \w+: .+ \(remedy: .+\)", error), error
    logged = [line for line in w.log().splitlines() if line.endswith(error)]
    assert logged and " ERROR worker: " in logged[0], w.log()[-3000:]  # the same line, logged once
    assert w.proc.poll() is None  # still up after answering
    return error


@pytest.mark.slow
def test_missing_f5_ckpt_stays_up_and_every_job_names_phase_and_variable(worker_with, tmp_path) -> None:
    w = worker_with(F5_CKPT=str(tmp_path / "nowhere" / "model.safetensors"))
    error = _answers_every_job_with_its_logged_line(w)
    assert error.startswith("worker startup failed in models: F5_CKPT=")
    assert "no such file or directory" in error


class _Refusing(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(403)
        self.send_header("Content-Type", "application/json")
        body = b'{"error": "access to this repo is restricted"}'
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_HEAD = do_GET

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.slow
def test_a_hub_that_refuses_is_named_in_every_answer(worker_with) -> None:
    hub = ThreadingHTTPServer(("127.0.0.1", 0), _Refusing)
    threading.Thread(target=hub.serve_forever, daemon=True).start()
    try:
        w = worker_with(WHISPER_MODEL="hf:owner/whisper@v1", HF_ENDPOINT=f"http://127.0.0.1:{hub.server_port}")
        error = _answers_every_job_with_its_logged_line(w)
    finally:
        hub.shutdown()
        hub.server_close()
    assert error.startswith("worker startup failed in models: WHISPER_MODEL: downloading owner/whisper@v1 "
                            "failed")
    assert "HF_TOKEN" in error


@pytest.mark.slow
@pytest.mark.parametrize(("name", "value"), [("WORKER_MAX_TEXT_CHARS", "lots"), ("F5_DTYPE", "float8")])
def test_a_malformed_variable_is_named_in_every_answer(worker_with, name: str, value: str) -> None:
    w = worker_with(**{name: value})
    error = _answers_every_job_with_its_logged_line(w)
    assert error.startswith(f"worker startup failed in config: {name}=")
    assert "template" in error  # the remedy says where to fix it


@pytest.mark.slow
def test_a_checkpoint_that_does_not_load(worker_with, tmp_path: Path) -> None:
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not a safetensors file at all")
    w = worker_with(F5_CKPT=str(broken))
    error = _answers_every_job_with_its_logged_line(w)
    assert error.startswith("worker startup failed in load: ")


# -- in process --------------------------------------------------------------------------------------
def test_classification_by_kind() -> None:
    config = failure.classify(SettingsError("F5_DTYPE", "must be one of a, b", value="x"), "config")
    assert (config.phase, config.cause) == ("config", "F5_DTYPE='x' must be one of a, b")
    models = failure.classify(ModelError("F5_CKPT", "is no such file", value="/x"), "models")
    assert (models.phase, models.cause, models.replace) == ("models", "F5_CKPT='/x' is no such file", False)
    bug = failure.classify(KeyError("oops"), "load")
    assert bug.phase == "load" and bug.cause.startswith("KeyError") and not bug.expected


def test_a_missing_module_is_the_environment_not_the_model_files() -> None:
    # Seen on a GPU machine: a package the models import was absent, and the answer sent the user to the
    # model files. The remedy names the artifact and the env instead, keeping the phase it failed in.
    found = failure.classify(ModuleNotFoundError("No module named 'opentelemetry.exporter'"), "load")
    assert found.phase == "load" and not found.expected
    assert found.cause == "ModuleNotFoundError: No module named 'opentelemetry.exporter'"
    assert found.remedy == failure._REMEDIES["environment"] != failure.classify(KeyError("x"), "load").remedy


def test_a_cuda_fault_asks_for_a_fresh_worker() -> None:
    found = failure.classify(RuntimeError("CUDA error: an illegal memory access was encountered"), "warmup")
    assert found.phase == "cuda" and found.replace
    assert found.job_output() == {"error": found.line, "refresh_worker": True}
    from worker.errors import DeviceError

    assert failure.classify(DeviceError("WORKER_DEVICE", "no CUDA device is visible"), "load").replace


def test_the_sdk_turns_the_answer_into_a_failed_job_that_stops_the_worker() -> None:
    from runpod.serverless.modules.rp_job import run_job

    served: list[dict] = []
    fault = failure.classify(RuntimeError("CUDA error: device-side assert triggered"), "warmup")
    failure.serve_queue(fault, start=served.append)
    handler = served[0]["handler"]
    first = asyncio.run(run_job(handler, {"id": "j1", "input": {"text": "hi"}}))
    again = asyncio.run(run_job(handler, {"id": "j2", "input": {}}))
    assert first == again == {"error": fault.line, "stopPod": True}  # the SDK's own refresh_worker
    config_error = failure.classify(SettingsError("X", "is bad", value="1"), "config")
    failure.serve_queue(config_error, start=served.append)
    answer = asyncio.run(run_job(served[1]["handler"], {"id": "j3", "input": {}}))
    assert answer == {"error": config_error.line}  # no refresh: a fresh container would fail the same way


def test_only_a_queue_gets_answers() -> None:
    assert failure.answers_jobs([], {"RUNPOD_WEBHOOK_GET_JOB": "http://x/$ID"})
    assert failure.answers_jobs(["--rp_serve_api", "--rp_api_port", "1"], {})
    assert not failure.answers_jobs([], {})
    assert not failure.answers_jobs(["--test_input", "{}"], {})


def test_a_local_run_without_a_queue_exits_with_the_phase_code(monkeypatch, caplog) -> None:
    from worker import __main__ as startup

    monkeypatch.setattr(sys, "argv", ["worker"])
    monkeypatch.delenv("RUNPOD_WEBHOOK_GET_JOB", raising=False)
    monkeypatch.delenv("RUNPOD_REALTIME_PORT", raising=False)
    served: list = []
    assert startup.fail(SettingsError("F5_DTYPE", "is bad", value="x"), "config", served.append) == 2
    assert startup.fail(ModelError("F5_CKPT", "gone"), "models", served.append) == 2
    assert startup.fail(KeyError("bug"), "load", served.append) == 1
    assert served == []
    assert "worker startup failed in config: F5_DTYPE='x' is bad (remedy: " in caplog.text
