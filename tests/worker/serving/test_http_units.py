"""The http mode's pieces in process: the byte-stream encoders (every format decodes back to the samples'
duration, streamed or whole), OpenAI fields -> job input, the settings, what /ping says when, and the
routes on the real engine through Starlette's test client (the server itself: test_http_server.py)."""

from __future__ import annotations

import base64
import io
import json
import threading

import av
import numpy as np
import pytest
import soundfile
from jobkit import audio_bytes, tiny_engine, voice_like

from worker.errors import SettingsError, WorkerError
from worker.queue.failure import StartupFailure
from worker.serving import openai_api
from worker.serving.encode import FORMATS, StreamEncoder, encode_whole
from worker.serving.errors import ApiError
from worker.serving.state import WorkerState
from worker.settings import ServingSettings, mode

RATE = 24000
# Encoder priming and padding: LAME pads to whole frames (~50 ms), AAC primes 1024 samples + a frame.
SLACK_S = {"mp3": 0.08, "aac": 0.1}


def decoded_seconds(data: bytes, fmt: str) -> float:
    if fmt == "pcm":
        return len(data) / 2 / RATE
    with av.open(io.BytesIO(data)) as container:
        # Opus decodes at 48 kHz whatever it was made from: count each frame at its own rate.
        return sum(frame.samples / frame.sample_rate for frame in container.decode(audio=0))


def _chunks() -> list[np.ndarray]:
    return [voice_like(seconds, RATE, seed=i) for i, seconds in enumerate((0.7, 1.3, 0.45))]


@pytest.mark.parametrize("fmt", FORMATS)
def test_streamed_and_whole_files_decode_to_the_samples_duration(fmt: str) -> None:
    chunks = _chunks()
    seconds = sum(len(c) for c in chunks) / RATE
    encoder = StreamEncoder(fmt, RATE)
    pieces = [encoder.push(c) for c in chunks] + [encoder.finish()]
    assert sum(map(len, pieces[:-1])) > 0  # bytes come out before the end: a real stream
    for data in (b"".join(pieces), encode_whole(chunks, fmt, RATE)):
        assert abs(decoded_seconds(data, fmt) - seconds) <= SLACK_S.get(fmt, 0.001), fmt


@pytest.mark.parametrize("fmt", ["wav", "flac"])
def test_whole_wav_and_flac_carry_their_length_for_any_reader(fmt: str) -> None:
    chunks = _chunks()
    samples, rate = soundfile.read(io.BytesIO(encode_whole(chunks, fmt, RATE)), dtype="float32")
    assert rate == RATE and len(samples) == sum(len(c) for c in chunks)
    assert np.max(np.abs(samples - np.concatenate(chunks))) < 1e-4


def test_a_streamed_wav_says_its_length_is_unknown_and_still_reads() -> None:
    encoder = StreamEncoder("wav", RATE)
    data = b"".join([encoder.push(c) for c in _chunks()] + [encoder.finish()])
    assert data[4:8] == b"\xff\xff\xff\xff" and data[40:44] == b"\xff\xff\xff\xff"
    samples, _ = soundfile.read(io.BytesIO(data), dtype="float32")
    assert len(samples) == sum(len(c) for c in _chunks())


def test_speech_fields_become_the_job_input() -> None:
    call, issues = openai_api.speech_call({"model": "tts-1", "input": "Hi.", "voice": {"id": "alice"},
                                           "response_format": "opus", "speed": 1.5, "stream_format": "sse",
                                           "seed": 3, "nfe_step": 8})
    assert not issues.items
    assert call.job == {"task": "tts", "text": "Hi.", "voice": "alice", "speed": 1.5, "seed": 3,
                        "nfe_step": 8}
    assert (call.response_format, call.stream_format) == ("opus", "sse")
    # ref_audio wins over the voice every OpenAI client sends.
    call, _ = openai_api.speech_call({"model": "f5-tts", "input": "Hi.", "voice": "alloy",
                                      "ref_audio": "QUJD"})
    assert "voice" not in call.job and call.job["ref_audio"] == "QUJD" and call.response_format == "mp3"


def test_speech_issues_are_collected_each_naming_its_field() -> None:
    _, issues = openai_api.speech_call({"model": 7, "input": "Hi.", "response_format": "ogg",
                                        "stream_format": "video", "instructions": "cheerful"})
    params = [p for p, _ in issues.items]
    assert params == ["instructions", "model", "response_format", "stream_format", "voice"]
    with pytest.raises(ApiError) as caught:
        issues.raise_any()
    assert caught.value.status == 400 and caught.value.param == "instructions"
    assert "response_format: must be one of mp3, opus, aac, flac, wav, pcm (got 'ogg')" in \
        caught.value.message


def test_transcription_fields() -> None:
    call, issues = openai_api.transcription_call(
        {"model": ["whisper-1"], "response_format": ["verbose_json"], "timestamp_granularities[]": ["word"],
         "language": ["en"]}, b"RIFF")
    assert not issues.items and call.words and not call.segments
    assert call.job == {"task": "transcribe", "timestamps": True, "audio": "UklGRg==", "language": "en"}
    _, issues = openai_api.transcription_call({"timestamp_granularities[]": ["word"], "prompt": ["x"]}, None)
    assert [p for p, _ in issues.items] == ["prompt", "file", "model", "timestamp_granularities[]"]


def test_settings() -> None:
    assert ServingSettings.from_env({}) == ServingSettings(port=80, health_port=80)
    assert ServingSettings.from_env({"PORT": "8080"}).health_port == 8080
    assert ServingSettings.from_env({"PORT": "8080", "PORT_HEALTH": "8081"}).health_port == 8081
    with pytest.raises(SettingsError, match="PORT='x' is not an integer; WORKER_MAX_INFLIGHT='0' must be"):
        ServingSettings.from_env({"PORT": "x", "WORKER_MAX_INFLIGHT": "0"})
    assert mode({}) == "queue" and mode({"WORKER_MODE": " HTTP "}) == "http"
    with pytest.raises(SettingsError, match="WORKER_MODE='grpc' must be one of queue, http"):
        mode({"WORKER_MODE": "grpc"})


def test_what_ping_says() -> None:
    state = WorkerState()
    assert state.ping() == 204
    state.ready(object())
    assert state.ping() == 200
    state.fault()  # a GPU fault hit a request: replace this worker
    assert state.ping() == 500
    failed = WorkerState()
    failed.failed(StartupFailure("models", "F5_CKPT: no such file", "fix it"))
    assert failed.ping() == 200  # requests still reach it and read why
    cuda = WorkerState()
    cuda.failed(StartupFailure("cuda", "no GPU", "replace", replace=True))
    assert cuda.ping() == 200
    cuda.tell()  # once one request has been told, ask for a fresh worker
    assert cuda.ping() == 500


# ---- the routes on the real engine, in process ----------------------------------------------------------

@pytest.fixture(scope="module")
def client(tmp_path_factory):
    from starlette.testclient import TestClient

    from devtools.serve_http import default_voices
    from worker.serving.app import build_app
    from worker.serving.service import Service
    from worker.settings import JobSettings

    engine, config = tiny_engine()
    voices = default_voices(tmp_path_factory.mktemp("cache"))
    state = WorkerState()
    state.ready(Service(engine, config, JobSettings(voices_dir=voices), on_fatal=state.fault))
    app = build_app(state, ServingSettings(max_inflight=1))
    with TestClient(app) as test_client:
        yield test_client, app


def test_routes_in_process(client) -> None:
    http, _ = client
    assert http.get("/ping").json() == {"status": "ready", "inflight": 0, "max_inflight": 1}
    listed = http.get("/v1/audio/voices").json()["voices"]
    assert [v["name"] for v in listed] == ["default"]
    answer = http.post("/v1/audio/speech", json={"model": "f5-tts", "input": "Hello there.",
                                                 "voice": "default", "response_format": "wav", "nfe_step": 2,
                                                 "seed": 4})
    assert answer.status_code == 200 and answer.headers["content-type"] == "audio/wav"
    samples, rate = soundfile.read(io.BytesIO(answer.content))
    assert rate == RATE and len(samples) > RATE // 4
    bad = http.post("/v1/audio/speech", json={"model": "f5-tts", "input": "", "voice": "nobody"})
    assert bad.status_code == 400
    assert bad.json()["error"]["param"] == "input"
    assert "voice: no preset named 'nobody' (available: default)" in bad.json()["error"]["message"]
    missing = http.get("/v1/nothing")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "unknown_route"


def test_native_job_route_answers_like_the_queue_handler(client) -> None:
    http, _ = client
    out = http.post("/v1/jobs", json={"input": {"task": "voices"}})
    assert out.status_code == 200 and out.json()["voices"][0]["name"] == "default"
    bad = http.post("/v1/jobs", json={"input": {"txt": "Hi", "voice": "default"}})
    assert bad.status_code == 400
    assert bad.json()["error"].startswith("input.txt: unknown field for task 'tts'. Did you mean 'text'?")
    ref = base64.b64encode(audio_bytes(voice_like(1.0, 16000), 16000)).decode()
    streamed = http.post("/v1/jobs", json={"input": {"text": "One. Two.", "ref_audio": ref,
                                                     "ref_text": "Ref.", "nfe_step": 2, "stream": True}})
    lines = [json.loads(line) for line in streamed.text.splitlines()]
    assert streamed.headers["content-type"] == "application/x-ndjson"
    assert lines[-1]["done"] is True and lines[-1]["chunks"] == len(lines) - 1


def test_a_full_worker_sheds_load(client) -> None:
    http, app = client
    assert app.state.slots.take()  # the only slot, as a running request holds it
    try:
        busy = http.post("/v1/audio/speech", json={"model": "f5-tts", "input": "Hi.", "voice": "default"})
        assert busy.status_code == 429 and busy.headers["retry-after"] == "2"
        assert busy.json()["error"]["type"] == "rate_limit_error"
    finally:
        app.state.slots.give()


def test_loading_and_failed_workers_answer_503() -> None:
    from starlette.testclient import TestClient

    from worker.serving.app import build_app

    state = WorkerState()
    with TestClient(build_app(state, ServingSettings())) as http:
        assert http.get("/ping").status_code == 204
        loading = http.post("/v1/audio/speech", json={})
        assert loading.status_code == 503 and loading.headers["retry-after"] == "2"
        assert loading.json()["error"]["code"] == "worker_loading"
        state.failed(StartupFailure("load", "RuntimeError: bad weights", "check F5_CKPT"))
        failed = http.post("/v1/audio/transcriptions", files={"file": ("a.wav", b"x")})
        assert failed.status_code == 503
        assert failed.json()["error"]["message"] == (
            "worker startup failed in load: RuntimeError: bad weights (remedy: check F5_CKPT)")
        assert http.get("/ping").json()["error"] == failed.json()["error"]["message"]


def test_a_cancelled_deadline_stops_the_synthesis_at_its_next_check() -> None:
    from worker.serving.service import Cancelled, RequestDeadline

    cancel = threading.Event()
    deadline = RequestDeadline(60, cancel)
    deadline.in_synthesis()
    cancel.set()
    with pytest.raises(Cancelled, match="client: disconnected while synthesizing"):
        deadline.in_synthesis()


def test_the_http_errors_sit_under_the_worker_root() -> None:
    from worker.serving.errors import Cancelled

    err = ApiError(429, "the worker is busy", None, "worker_busy", {"Retry-After": "2"})
    assert isinstance(err, WorkerError) and err.where == "request" and str(err) == "the worker is busy"
    assert err.body()["error"] == {"message": "the worker is busy", "type": "rate_limit_error", "param": None,
                                   "code": "worker_busy"}
    field = ApiError(400, "input: must not be empty", "input")
    assert field.where == "input" and field.type == "invalid_request_error"
    assert isinstance(Cancelled("client", "disconnected"), WorkerError)
