"""`just serve-http PORT` (``python -m devtools.serve_http``) as a real server, driven by the real
``openai`` client from PyPI and by raw HTTP: /ping 204 then 200, speech in every format (whole, streamed
as audio bytes, as SSE), transcription with word timestamps, bad fields named, 429 past the in-flight
limit, a disconnect freeing its slot, a hypothesis fuzz with the server still serving, and a bounded
soak with the server's memory flat."""

from __future__ import annotations

import base64
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import av
import httpx2 as httpx
import openai
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jobkit import TINY_CACHE, audio_bytes, free_port, voice_like

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[3]
STARTUP_S = 600
RATE = 24000
MAX_INFLIGHT = 2
TEXT = ("The quick brown fox jumps over the lazy dog near the river bank. A second sentence follows it, "
        "somewhat longer than the first one, so that the text needs more than one batch of audio. Then a "
        "third sentence arrives, and a fourth, to be sure of it; the streamed answer must start before the "
        "whole of this is made. Last of all, a closing line to end the paragraph.")
LONG = " ".join([TEXT] * 6)  # ~2,400 characters: many batches, seconds of work at a high nfe_step
SLACK_S = {"mp3": 0.08, "aac": 0.1}
FORMATS = ("mp3", "opus", "aac", "flac", "wav", "pcm")


def _status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code
    except OSError:
        return None


class Server:
    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp / "serve-http.log"
        env = {**os.environ, "PYTHONPATH": str(ROOT), "WORKER_TINY_CACHE": str(TINY_CACHE),
               "WORKER_MAX_INFLIGHT": str(MAX_INFLIGHT)}
        env.pop("WORKER_VOICES_DIR", None)  # the default voice, as `just serve-http` makes it
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "devtools.serve_http", "--port",
                                             str(self.port), "--cache-dir", str(tmp / "cache")],
                                            cwd=ROOT, env={**env, "WORKER_TINY_CACHE": str(tmp / "cache")},
                                            stdout=log, stderr=subprocess.STDOUT)
        self.pings: list[int | None] = []

    def wait_ready(self) -> None:
        deadline = time.monotonic() + STARTUP_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"serve-http exited with {self.process.returncode}:\n{self.log()}")
            status = _status(self.base + "/ping")
            if not self.pings or self.pings[-1] != status:
                self.pings.append(status)
            if status == 200:
                return
            time.sleep(0.2)
        pytest.fail(f"/ping never turned 200 (saw {self.pings}):\n{self.log()}")

    def ping(self) -> dict:
        with urllib.request.urlopen(self.base + "/ping", timeout=10) as response:
            return json.loads(response.read())

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve-http")
    # The generated models already cached by the other tests: linked, not generated again.
    (tmp / "cache").mkdir()
    for entry in TINY_CACHE.iterdir():
        (tmp / "cache" / entry.name).symlink_to(entry)
    started = Server(tmp)
    try:
        started.wait_ready()
        yield started
    finally:
        started.stop()


@pytest.fixture(scope="module")
def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base + "/v1", api_key="unused", max_retries=0, timeout=300)


def decoded_seconds(data: bytes, fmt: str) -> float:
    if fmt == "pcm":
        return len(data) / 2 / RATE
    with av.open(io.BytesIO(data)) as container:
        return sum(frame.samples / frame.sample_rate for frame in container.decode(audio=0))


def _speech(client: openai.OpenAI, fmt: str, **extra) -> bytes:
    return client.audio.speech.create(model="tts-1", voice="default", input=TEXT, response_format=fmt,
                                      extra_body={"seed": 11, "nfe_step": 2, **extra}).content


def wait_until(predicate, seconds: float) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


def test_ping_is_204_while_loading_then_200(server: Server) -> None:
    seen = [s for s in server.pings if s is not None]  # None: not listening yet
    assert seen[0] == 204 and seen[-1] == 200 and set(seen) == {204, 200}, server.pings
    assert server.ping() == {"status": "ready", "inflight": 0, "max_inflight": MAX_INFLIGHT}


def test_models_and_voices(server: Server, client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list()] == ["f5-tts", "whisperx"]
    voices = httpx.get(server.base + "/v1/audio/voices").json()["voices"]
    assert voices == [{"name": "default", "ref_text": "Some call me nature, others call me mother nature.",
                       "duration": 5.333, "sample_rate": 24000}]


def test_speech_in_every_format_decodes_to_the_same_duration(client: openai.OpenAI) -> None:
    reference = decoded_seconds(_speech(client, "wav"), "wav")
    assert reference > 3.0  # several batches of speech
    for fmt in FORMATS:
        data = _speech(client, fmt)
        assert abs(decoded_seconds(data, fmt) - reference) <= SLACK_S.get(fmt, 0.001), fmt


@pytest.mark.parametrize("fmt", FORMATS)
def test_streamed_speech_arrives_in_pieces_and_is_the_same_audio(client: openai.OpenAI, fmt: str) -> None:
    whole = decoded_seconds(_speech(client, fmt), fmt)
    arrivals: list[tuple[float, int]] = []
    with client.audio.speech.with_streaming_response.create(
            model="f5-tts", voice="default", input=TEXT, response_format=fmt, stream_format="audio",
            extra_body={"seed": 11, "nfe_step": 2}) as response:
        assert response.headers.get("content-length") is None  # chunked: sent as it is made
        data = b""
        for piece in response.iter_bytes():
            arrivals.append((time.monotonic(), len(piece)))
            data += piece
    assert len(arrivals) >= 2, arrivals
    assert abs(decoded_seconds(data, fmt) - whole) <= SLACK_S.get(fmt, 0.001)


def test_sse_speech_events(server: Server) -> None:
    body = {"model": "f5-tts", "voice": "default", "input": TEXT, "response_format": "pcm",
            "stream_format": "sse", "seed": 11, "nfe_step": 2}
    events = []
    with httpx.stream("POST", server.base + "/v1/audio/speech", json=body, timeout=300) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
    deltas = [e for e in events if e["type"] == "speech.audio.delta"]
    assert len(deltas) >= 2 and events[-1] == {"type": "speech.audio.done"}
    pcm = b"".join(base64.b64decode(e["audio"]) for e in deltas)
    wav = httpx.post(server.base + "/v1/audio/speech", json={**body, "response_format": "wav",
                                                             "stream_format": None}, timeout=300).content
    assert pcm == wav[44:]  # the same samples as the whole WAV, after its header


def test_transcription_with_word_timestamps(client: openai.OpenAI) -> None:
    # The tiny random Whisper writes ~1,000 characters whatever it hears; 25 s give the aligner room.
    wav = audio_bytes(voice_like(25.0, 16000, seed=5), 16000)
    out = client.audio.transcriptions.create(model="whisper-1", file=("talk.wav", wav), language="en",
                                             response_format="verbose_json",
                                             timestamp_granularities=["word", "segment"])
    assert out.language == "en" and abs(out.duration - 25.0) < 0.01 and out.text
    assert out.words and out.segments
    starts = [w.start for w in out.words]
    assert starts == sorted(starts) and all(0 <= w.start <= w.end <= 25.0 for w in out.words)
    srt = client.audio.transcriptions.create(model="whisper-1", file=("talk.wav", wav), language="en",
                                             response_format="srt")
    assert srt.startswith("1\n00:00:")
    text = client.audio.transcriptions.create(model="whisper-1", file=("talk.wav", wav),
                                              response_format="text")
    assert isinstance(text, str) and text.strip()
    plain = client.audio.transcriptions.create(model="whisper-1", file=("talk.wav", wav))
    assert plain.text


def test_bad_fields_are_400s_naming_the_field(client: openai.OpenAI) -> None:
    cases = [({"speed": 9.0}, "speed", "speed: must be from 0.25 to 4 (got 9.0)"),
             ({"voice": "alloy"}, "voice", "voice: no preset named 'alloy' (available: default)"),
             ({"model": ""}, "model", "model: must be a model name such as f5-tts"),
             ({"input": "x" * 5001}, "input", "input: is 5001 characters; the limit is 5000"),
             ({"extra_body": {"nfe_step": 0}}, "nfe_step", "nfe_step: must be from 1 to 128 (got 0)")]
    for change, param, message in cases:
        args = {"model": "f5-tts", "voice": "default", "input": "Hello.", **change}
        with pytest.raises(openai.BadRequestError) as caught:
            client.audio.speech.create(**args)
        error = caught.value.body
        assert caught.value.status_code == 400 and error["param"] == param, error
        assert error["message"].startswith(message) and error["type"] == "invalid_request_error", error
    with pytest.raises(openai.BadRequestError) as caught:
        client.audio.transcriptions.create(model="whisper-1", file=("a.wav", b"not audio at all, not at all"))
    assert caught.value.body["param"] == "file" and "not readable audio" in caught.value.body["message"]


def _hold(server: Server, body: dict) -> socket.socket:
    """Sends a request and leaves it open without reading: it holds a slot until it ends or is closed."""
    data = json.dumps(body).encode()
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.sendall(b"POST /v1/audio/speech HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: " + str(len(data)).encode() + b"\r\n\r\n" + data)
    return sock


def test_overload_is_429_and_disconnects_free_their_slots(server: Server, client: openai.OpenAI) -> None:
    long_job = {"model": "f5-tts", "voice": "default", "input": LONG, "nfe_step": 96, "seed": 1}
    held = [_hold(server, long_job), _hold(server, {**long_job, "stream_format": "audio"})]
    try:
        assert wait_until(lambda: server.ping()["inflight"] == MAX_INFLIGHT, 60), server.ping()
        with pytest.raises(openai.RateLimitError) as caught:
            client.audio.speech.create(model="f5-tts", voice="default", input="Hello.")
        assert caught.value.response.headers["retry-after"] == "2"
        assert caught.value.body["code"] == "worker_busy"
    finally:
        closed = time.monotonic()
        for sock in held:
            sock.close()
    # Both stop at their next check (an ODE step) rather than running on through ~2,400 characters.
    assert wait_until(lambda: server.ping()["inflight"] == 0, 20), server.ping()
    assert time.monotonic() - closed < 20
    assert decoded_seconds(_speech(client, "wav"), "wav") > 3.0  # and the worker serves on


def test_a_streamed_request_disconnected_mid_stream_frees_its_slot(server: Server) -> None:
    body = {"model": "f5-tts", "voice": "default", "input": LONG, "nfe_step": 32, "stream_format": "audio",
            "response_format": "pcm"}
    with httpx.stream("POST", server.base + "/v1/audio/speech", json=body, timeout=300) as response:
        first = next(response.iter_bytes())
        assert first and server.ping()["inflight"] == 1, server.log()
    assert wait_until(lambda: server.ping()["inflight"] == 0, 20), server.ping()


# ---- hostile inputs: fuzzed; the server must answer each one with a status that is not a 5xx ----------

_values = st.one_of(st.none(), st.booleans(), st.integers(-2**40, 2**40),
                    st.floats(allow_nan=False, allow_infinity=False),  # JSON has no inf or nan
                    st.text(max_size=30), st.lists(st.integers(), max_size=3),
                    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2))
_speech_bodies = st.one_of(
    st.dictionaries(st.sampled_from(["model", "input", "voice", "response_format", "speed", "stream_format",
                                     "ref_audio", "ref_text", "nfe_step", "seed", "instructions", "zz"]),
                    _values, max_size=6),
    st.fixed_dictionaries({"model": st.just("f5-tts"), "input": st.text(min_size=1, max_size=40),
                           "voice": st.sampled_from(["default", "nobody", "../etc"]),
                           "nfe_step": st.integers(1, 3), "speed": st.floats(0.25, 4.0),
                           "response_format": st.sampled_from(FORMATS)}),
    _values)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=_speech_bodies, raw=st.binary(max_size=64), form=st.dictionaries(
    st.sampled_from(["model", "language", "response_format", "timestamp_granularities[]", "prompt"]),
    st.text(max_size=12), max_size=4))
def test_fuzzed_requests_get_an_answer_and_never_a_5xx(server: Server, body, raw: bytes, form) -> None:
    with httpx.Client(base_url=server.base, timeout=300) as http:
        answers = [http.post("/v1/audio/speech", json=body),
                   http.post("/v1/audio/speech", content=raw, headers={"content-type": "application/json"}),
                   http.post("/v1/audio/transcriptions", data=form, files={"file": ("x.wav", raw)}),
                   http.post("/v1/jobs", json={"input": body})]
    for answer in answers:
        assert answer.status_code in (200, 400, 413), (answer.status_code, answer.text[:300])
        if answer.status_code != 200:
            assert answer.json()["error"], answer.text


def test_the_server_serves_on_after_the_fuzz(client: openai.OpenAI) -> None:
    assert decoded_seconds(_speech(client, "mp3"), "mp3") > 3.0


# ---- a bounded soak: a few hundred mixed requests, the server's memory flat at the end ----------------

SOAK_REQUESTS = 240


def test_soak_memory_stays_flat(server: Server, client: openai.OpenAI) -> None:
    wav = audio_bytes(voice_like(2.0, 16000, seed=9), 16000)
    # A walked-away stream holds its slot until its work reaches the next check, so a client that comes
    # straight back may be told 429: it waits Retry-After and tries again, as the openai client does.
    client = client.with_options(max_retries=20)
    shed = [0]

    def walk_away() -> None:
        body = {"model": "f5-tts", "voice": "default", "input": TEXT, "nfe_step": 2, "stream_format": "audio",
                "response_format": "pcm"}
        while True:
            with httpx.stream("POST", server.base + "/v1/audio/speech", timeout=300, json=body) as response:
                if response.status_code == 429:
                    shed[0] += 1
                    time.sleep(float(response.headers["retry-after"]))
                    continue
                assert response.status_code == 200
                next(response.iter_bytes())
                return

    def one(i: int) -> None:
        kind = i % 6
        if kind == 0:
            client.audio.speech.create(model="f5-tts", voice="default", input=f"Sentence {i}. Another.",
                                       response_format=FORMATS[i // 6 % 6], extra_body={"nfe_step": 2})
        elif kind == 1:
            with client.audio.speech.with_streaming_response.create(
                    model="f5-tts", voice="default", input=f"Stream {i}. Two.", response_format="mp3",
                    stream_format="audio", extra_body={"nfe_step": 2}) as response:
                for _ in response.iter_bytes():
                    pass
        elif kind == 2:
            client.audio.transcriptions.create(model="whisper-1", file=("a.wav", wav), response_format="json")
        elif kind == 3:
            with pytest.raises(openai.BadRequestError):
                client.audio.speech.create(model="f5-tts", voice="nobody", input="Hi.")
        elif kind == 4:
            client.models.list()
        else:  # a stream the client walks away from after the first bytes
            walk_away()

    for i in range(60):  # warm: allocator pools, encoder libraries, caches
        one(i)
    samples: list[int] = []  # RSS every 20 requests, taken while nothing is in flight
    started = time.monotonic()
    errors: list[BaseException] = []
    for block in range(SOAK_REQUESTS // 20):
        def worker(offset: int, block: int = block) -> None:  # two clients at once: the in-flight limit
            for i in range(60 + block * 20 + offset, 60 + (block + 1) * 20, 2):
                try:
                    one(i)
                except BaseException as err:
                    errors.append(err)

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors, errors[:3]
        assert wait_until(lambda: server.ping()["inflight"] == 0, 30)
        samples.append(server.rss_kib())
    elapsed = time.monotonic() - started
    # Flat: no trend between the first and the last samples (the allocator moves RSS by tens of MiB
    # either way from one sample to the next; a leak climbs).
    first, last = sorted(samples[:4])[1:3], sorted(samples[-4:])[1:3]
    growth = sum(last) / 2 - sum(first) / 2
    print(f"soak: {SOAK_REQUESTS} requests in {elapsed:.0f} s; RSS (MiB, every 20 requests): "
          f"{[round(k / 1024) for k in samples]}; median growth {growth / 1024:+.1f} MiB; "
          f"raw-stream 429s retried: {shed[0]}")
    assert growth < 40 * 1024, f"RSS grew {growth / 1024:.1f} MiB over {SOAK_REQUESTS} requests: {samples}"


def test_sigterm_with_work_in_flight_ends_the_server_at_once(tmp_path: Path) -> None:
    """Shutting down stops running synthesis at its next check: uvicorn's graceful shutdown must not wait
    minutes for audio nobody will receive (RunPod sends SIGKILL soon after SIGTERM)."""
    (tmp_path / "cache").mkdir()
    for entry in TINY_CACHE.iterdir():
        (tmp_path / "cache" / entry.name).symlink_to(entry)
    own = Server(tmp_path)
    try:
        own.wait_ready()
        held = _hold(own, {"model": "f5-tts", "voice": "default", "input": LONG, "nfe_step": 96})
        assert wait_until(lambda: own.ping()["inflight"] == 1, 60)
        started = time.monotonic()
        own.process.terminate()
        own.process.wait(timeout=30)
        assert time.monotonic() - started < 15
        held.close()
    finally:
        own.stop()
