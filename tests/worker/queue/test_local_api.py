"""The real runpod local API (`python -m devtools.devserve`, i.e. `just serve PORT`) driven over HTTP, with
the streaming (generator) handler that WORKER_STREAMING=1 picks (the default plain handler:
test_local_api_default.py).

Pins down what runpod 1.12's local server really does with this worker's generator handler:
``/runsync`` answers ``{"status": "COMPLETED", "output": [items...]}`` (a yielded ``{"error"}`` too: only
production marks such a job FAILED), ``/run`` queues a job that runs when ``/stream/<id>`` is called,
which returns every item at once.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from jobkit import (
    TINY_CACHE,
    AudioServer,
    audio_bytes,
    b64,
    decode_b64,
    free_port,
    voice_like,
    wait_for_local_api,
)

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[3]
REF = b64(audio_bytes(voice_like(1.0, 16000, seed=21), 16000))
STARTUP_S = 600


def post(base: str, path: str, body: object, raw: bytes | None = None, timeout: float = 120
         ) -> tuple[int, dict]:
    data = raw if raw is not None else json.dumps(body).encode()
    request = urllib.request.Request(base + path, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        text = err.read()
        try:
            return err.code, json.loads(text)
        except ValueError:
            return err.code, {"raw": text.decode(errors="replace")}


@contextlib.contextmanager
def devserve(tmp_path_factory, **extra: str) -> Iterator[str]:
    """`just serve PORT` with these variables on top; yields its base URL."""
    voices = tmp_path_factory.mktemp("voices")
    (voices / "alice.wav").write_bytes(audio_bytes(voice_like(1.0, 24000, seed=22), 24000))
    (voices / "alice.txt").write_text("Hello, I am Alice.")
    port = free_port()
    log_path = tmp_path_factory.mktemp("serve") / "serve.log"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WORKER_VOICES_DIR": str(voices),
           "WORKER_TINY_CACHE": str(TINY_CACHE), "UVICORN_LOG_LEVEL": "warning", **extra}
    env.pop("RUNPOD_WEBHOOK_GET_JOB", None)
    with open(log_path, "wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "devtools.devserve", "--port", str(port)],
                                   cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_local_api(base, process, STARTUP_S, log_path.read_text, poll_s=0.5)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with devserve(tmp_path_factory, WORKER_STREAMING="1") as base:
        yield base


def runsync(base: str, job_input: object) -> list[dict]:
    status, body = post(base, "/runsync", {"input": job_input})
    assert status == 200 and body["status"] == "COMPLETED", body
    assert isinstance(body["output"], list)  # a generator handler's output: the list of its items
    return body["output"]


def test_tts_with_timestamps_and_subtitles(server: str) -> None:
    [out] = runsync(server, {"text": "Hello there. How are you?", "ref_audio": REF,
                             "ref_text": "A reference.", "seed": 1, "nfe_step": 4, "timestamps": True,
                             "subtitles": "srt"})
    samples, rate = decode_b64(out["audio"])
    assert rate == out["sample_rate"] == 24000 and samples.size > 0
    assert [w["word"] for w in out["words"]] == ["Hello", "there.", "How", "are", "you?"]
    assert out["subtitles"].startswith("1\n00:00:")
    assert set(out["timings"]) == {"prep", "synth", "align", "total"}


def test_transcribe_and_voices(server: str) -> None:
    [out] = runsync(server, {"task": "transcribe", "audio": REF, "language": "en"})
    assert out["language"] == "en" and isinstance(out["text"], str) and "segments" in out
    [listed] = runsync(server, {"task": "voices"})
    assert listed == {"voices": [{"name": "alice", "ref_text": "Hello, I am Alice.", "duration": 1.0,
                                  "sample_rate": 24000}]}
    [preset] = runsync(server, {"text": "Hi.", "voice": "alice", "nfe_step": 2})
    assert preset["ref_text"] == "Hello, I am Alice." and "audio" in preset


def test_reference_from_a_local_url(server: str) -> None:
    # devserve allows private addresses (a developer's file server); production refuses them.
    with AudioServer() as files:
        files.file("/ref.mp3", audio_bytes(voice_like(1.0, 16000, seed=23), 16000, "MP3"), "audio/mpeg")
        [out] = runsync(server, {"text": "From a URL.", "ref_audio": files.url("/ref.mp3"),
                                 "ref_text": "A reference.", "nfe_step": 2, "format": "flac"})
    assert out["format"] == "flac" and decode_b64(out["audio"])[0].size > 0


def test_bad_input_names_the_field_and_the_worker_keeps_serving(server: str) -> None:
    [bad] = runsync(server, {"txt": "Hello", "ref_audio": REF})
    assert bad["error"].startswith("input.txt: unknown field for task 'tts'. Did you mean 'text'?")
    [bad] = runsync(server, {"text": "Hi.", "ref_audio": REF, "speed": 100})
    assert bad == {"error": "input.speed: must be from 0.25 to 4 (got 100)"}
    [good] = runsync(server, {"text": "Still here.", "ref_audio": REF, "ref_text": "Ref.", "nfe_step": 2})
    assert "audio" in good


def test_run_then_stream(server: str) -> None:
    status, queued = post(server, "/run", {"input": {
        "text": "First sentence here. Second sentence there. Third one, too.", "ref_audio": REF,
        "ref_text": "A reference.", "seed": 2, "nfe_step": 2, "stream": True, "format": "mp3"}})
    assert status == 200 and queued["status"] == "IN_PROGRESS"
    status, streamed = post(server, f"/stream/{queued['id']}", None, raw=b"")
    assert status == 200 and streamed["status"] == "COMPLETED", streamed
    items = [entry["output"] for entry in streamed["stream"]]
    chunks, summary = items[:-1], items[-1]
    assert chunks and summary["done"] is True and summary["chunks"] == len(chunks)
    assert all(c["format"] == "mp3" and len(c["audio"]) <= 1_000_000 for c in chunks)
    assert sum(decode_b64(c["audio"])[0].size for c in chunks) > 0
    status, gone = post(server, f"/status/{queued['id']}", None, raw=b"")
    assert gone["status"] == "FAILED" and gone["error"] == "Job ID not found"


def test_short_http_fuzz_then_still_serving(server: str) -> None:
    rng = random.Random(7)
    bodies: list[bytes] = [b"", b"not json", b"[]", b"{}", b'{"input": null}', b'{"input": 5}',
                           b'{"input": {"task": "voices", "x": 1}}', b'{"input": {"text": "\\u0000"}}']
    alphabet = [*'{}[]":,0123456789 abcdeinprtux', "\\u00e9", "null", "true"]
    for _ in range(12):
        bodies.append("".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40))).encode())
    for _ in range(8):
        fields = {rng.choice(["text", "ref_audio", "task", "speed", "format", "nfe_step", "zzz"]):
                  rng.choice([None, 1, -3.5, "x", "tts", [], {}, True, REF[:64]]) for _ in range(3)}
        bodies.append(json.dumps({"input": fields}).encode())
    for body in bodies:
        status, answer = post(server, "/runsync", None, raw=body, timeout=60)
        assert status in (200, 422), (body, status, answer)
        if status == 200 and answer.get("output"):
            for item in answer["output"]:
                assert "error" not in item or item["error"].startswith("input"), item
    [good] = runsync(server, {"text": "After the fuzz.", "ref_audio": REF, "ref_text": "Ref.", "nfe_step": 2})
    assert "audio" in good
