"""Shared helpers for the job-layer tests: real audio made with numpy + soundfile, a real HTTP server on
127.0.0.1 with the behaviours a reference URL can have, and the tiny real engine."""

from __future__ import annotations

import base64
import functools
import io
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import soundfile

TINY_CACHE = Path(__file__).resolve().parents[2] / ".cache" / "tiny-models"


def voice_like(seconds: float, rate: int, seed: int = 0) -> np.ndarray:
    """A speech-like test signal: a gliding harmonic tone with a syllable-rate envelope and noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    pitch = 140 + 30 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(pitch) / rate
    tone = sum(np.sin(k * phase) / k for k in range(1, 6))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t) ** 2
    signal = 0.25 * tone * envelope + 0.01 * rng.standard_normal(t.size)
    return np.clip(signal, -1, 1).astype(np.float32)


def audio_bytes(samples: np.ndarray, rate: int, fmt: str = "WAV", subtype: str | None = None,
                channels: int = 1) -> bytes:
    data = np.stack([samples] * channels, axis=1) if channels > 1 else samples
    buffer = io.BytesIO()
    soundfile.write(buffer, data, rate, format=fmt, subtype=subtype)
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


Route = Callable[[BaseHTTPRequestHandler], None]


class AudioServer:
    """A real threaded HTTP server on 127.0.0.1 serving configurable routes."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.hits: dict[str, int] = {}
        server = self

        class _Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                server.hits[path] = server.hits.get(path, 0) + 1
                route = server.routes.get(path)
                if route is None:
                    self.send_error(404, "no such file")
                    return
                try:
                    route(self)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def url(self, path: str) -> str:
        return self.base + path

    def file(self, path: str, body: bytes, content_type: str = "audio/wav") -> None:
        def route(h: BaseHTTPRequestHandler) -> None:
            h.send_response(200)
            h.send_header("Content-Type", content_type)
            h.send_header("Content-Length", str(len(body)))
            h.end_headers()
            h.wfile.write(body)
        self.routes[path] = route

    def redirect(self, path: str, target: str, status: int = 302) -> None:
        def route(h: BaseHTTPRequestHandler) -> None:
            h.send_response(status)
            h.send_header("Location", target)
            h.send_header("Content-Length", "0")
            h.end_headers()
        self.routes[path] = route

    def trickle(self, path: str, body: bytes, delay: float, step: int = 64) -> None:
        """Sends ``step`` bytes every ``delay`` seconds: each read succeeds, the whole takes long."""
        def route(h: BaseHTTPRequestHandler) -> None:
            h.send_response(200)
            h.send_header("Content-Type", "audio/wav")
            h.send_header("Content-Length", str(len(body)))
            h.end_headers()
            for i in range(0, len(body), step):
                h.wfile.write(body[i:i + step])
                h.wfile.flush()
                time.sleep(delay)
        self.routes[path] = route

    def endless(self, path: str, lie_length: bool = False) -> None:
        """Streams zeros without a Content-Length (or with a small false one) until the client stops."""
        def route(h: BaseHTTPRequestHandler) -> None:
            h.send_response(200)
            h.send_header("Content-Type", "application/octet-stream")
            if lie_length:
                h.send_header("Content-Length", "1000")
            h.end_headers()
            block = b"\0" * 65536
            for _ in range(2000):  # bounded: 128 MB at most
                h.wfile.write(block)
        self.routes[path] = route

    def __enter__(self) -> AudioServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def serve_audio() -> Iterator[AudioServer]:
    with AudioServer() as server:
        yield server


@functools.cache
def tiny_engine() -> tuple[Any, Any]:
    """The real Engine on the tiny generated models, loaded once per test process."""
    from devtools.tiny import tiny_config
    from worker.engine.core import Engine

    config = tiny_config(TINY_CACHE)
    return Engine.load(config), config


def decode_b64(text: str) -> tuple[np.ndarray, int]:
    samples, rate = soundfile.read(io.BytesIO(base64.b64decode(text)), dtype="float32")
    return samples, rate


def tiny_env() -> dict[str, str]:
    """Environment variables that make ``EngineSettings.from_env()`` (production's own config path) load
    the tiny models from local directories: nothing is downloaded."""
    _, config = tiny_engine()
    return {
        "WORKER_VOLUME": str(config.volume), "WORKER_DEVICE": config.device, "F5_ARCH": config.f5_arch,
        "F5_CKPT": config.f5_ckpt, "F5_VOCAB": config.f5_vocab, "F5_VOCODER": config.f5_vocoder,
        "F5_DTYPE": config.f5_dtype, "WHISPER_MODEL": config.whisper_model,
        "WHISPER_COMPUTE_TYPE": config.whisper_compute_type,
        "WHISPER_BATCH_SIZE": str(config.whisper_batch_size), "WHISPER_VAD": config.whisper_vad,
        "ALIGN_MODELS": ",".join(f"{k}={v}" for k, v in config.align_models.items()),
        "DEFAULT_LANGUAGE": config.default_language, "NLTK_DATA": str(config.nltk_dir),
    }


def wait_for_local_api(base: str, proc: subprocess.Popen, seconds: float, log: Callable[[], str],
                       poll_s: float = 0.3) -> None:
    """Until runpod's local API at ``base`` answers (its /openapi.json), failing the test with the tail
    of the log when ``proc`` exits first or ``seconds`` pass."""
    import pytest

    deadline = time.monotonic() + seconds
    while True:
        if proc.poll() is not None:
            pytest.fail(f"{proc.args[1:3]} exited with {proc.returncode}:\n{log()[-4000:]}")
        try:
            with urllib.request.urlopen(base + "/openapi.json", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"no local API at {base} within {seconds} s:\n{log()[-4000:]}")
        time.sleep(poll_s)
def free_port() -> int:
    """A TCP port nothing on 127.0.0.1 listens on right now (for a server subprocess)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
