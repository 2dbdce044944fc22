"""Job limits and job-layer settings, read from the environment once into a frozen value.

The engine's own configuration (models, device, volume) lives in ``worker.config``; these are the
knobs of the job layer: how much a job may send, how long a reference download may take, how large a
response may be, where preset voices live and where oversized outputs go.

Environment variables (all optional; defaults in brackets):

``WORKER_MAX_TEXT_CHARS`` [5000]           longest ``text`` a TTS job may ask for
``WORKER_MAX_AUDIO_BYTES`` [25000000]      largest reference/input audio file (decoded bytes)
``WORKER_MAX_REF_SECONDS`` [20]            longest reference audio for TTS
``WORKER_MAX_TRANSCRIBE_SECONDS`` [1800]   longest audio a transcribe job may send
``WORKER_URL_TIMEOUT_S`` [20]              whole-download deadline for an http(s) audio URL
``WORKER_URL_MAX_REDIRECTS`` [5]           redirects followed (each hop re-checked)
``WORKER_JOB_TIMEOUT_S`` [300]             per-job deadline: a job still working after this many seconds
                                           stops with an error naming it (checked between stages, batches
                                           and ODE steps; under RunPod's 600 s execution timeout and the
                                           ~330 s cut of load-balancing endpoints)
``WORKER_ALLOW_PRIVATE_URLS`` [0]          1: allow URLs resolving to loopback/private/link-local
                                           addresses (tests and trusted networks only: SSRF)
``WORKER_MAX_RESPONSE_BYTES`` [9500000]    largest JSON output returned inline (RunPod: /run 10 MB)
``WORKER_STREAM_CHUNK_BYTES`` [1000000]    largest streamed item (RunPod: 1 MB per stream chunk)
``WORKER_REF_TEXT_CACHE`` [256]            transcripts of reference audio kept (LRU, by audio hash)
``WORKER_VOICES_DIR`` [<volume>/voices]    preset voices: <name>.wav + <name>.txt (volume:
                                           WORKER_VOLUME, see worker.config)
``WORKER_STREAMING`` [0]                   0: plain handler (output is the dict itself, inline up to
                                           WORKER_MAX_RESPONSE_BYTES); 1: generator handler (stream: true
                                           streams; every output a list, each item <= 1 MB), read by
                                           worker.handler.make_handler
``BUCKET_ENDPOINT_URL``, ``BUCKET_ACCESS_KEY_ID``, ``BUCKET_SECRET_ACCESS_KEY`` (read by runpod's
    ``rp_upload``) and ``BUCKET_NAME`` [month-year, runpod's default]: where outputs over the response
    limit are uploaded; without them such outputs fail with an error naming the limit.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

DEFAULT_VOLUME = "/runpod-volume"


class LimitsError(ValueError):
    """An environment variable of the job layer is malformed; the message names it."""


@dataclass(frozen=True)
class JobLimits:
    max_text_chars: int = 5000
    max_audio_bytes: int = 25_000_000
    max_ref_seconds: float = 20.0
    max_transcribe_seconds: float = 1800.0
    url_timeout_s: float = 20.0
    url_max_redirects: int = 5
    job_timeout_s: float = 300.0
    allow_private_urls: bool = False
    max_response_bytes: int = 9_500_000
    stream_chunk_bytes: int = 1_000_000
    ref_text_cache: int = 256
    voices_dir: Path = Path(DEFAULT_VOLUME) / "voices"
    bucket_endpoint_url: str | None = None
    bucket_name: str | None = None

    @property
    def s3_configured(self) -> bool:
        return bool(self.bucket_endpoint_url)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, volume: str | os.PathLike | None = None
                 ) -> JobLimits:
        """Read the variables above; ``volume`` (the worker's volume dir) places the voices dir."""
        env = os.environ if env is None else env
        issues: list[str] = []

        def number(name: str, default: float, kind: type, minimum: float) -> float:
            raw = env.get(name, "").strip()
            if not raw:
                return default
            try:
                value = kind(raw)
            except ValueError:
                issues.append(f"{name}={raw!r} is not a {kind.__name__}")
                return default
            if value < minimum:
                issues.append(f"{name}={raw!r} must be at least {minimum}")
                return default
            return value

        flag = env.get("WORKER_ALLOW_PRIVATE_URLS", "0").strip().lower()
        if flag not in ("", "0", "1", "true", "false", "yes", "no"):
            issues.append(f"WORKER_ALLOW_PRIVATE_URLS={flag!r} must be 0 or 1")
        base = Path(volume if volume is not None else env.get("WORKER_VOLUME", "").strip()
                    or env.get("BOOTSTRAP_VOLUME", "").strip() or DEFAULT_VOLUME)
        voices = env.get("WORKER_VOICES_DIR", "").strip()
        limits = cls(
            max_text_chars=int(number("WORKER_MAX_TEXT_CHARS", cls.max_text_chars, int, 1)),
            max_audio_bytes=int(number("WORKER_MAX_AUDIO_BYTES", cls.max_audio_bytes, int, 1024)),
            max_ref_seconds=number("WORKER_MAX_REF_SECONDS", cls.max_ref_seconds, float, 0.5),
            max_transcribe_seconds=number(
                "WORKER_MAX_TRANSCRIBE_SECONDS", cls.max_transcribe_seconds, float, 1.0),
            url_timeout_s=number("WORKER_URL_TIMEOUT_S", cls.url_timeout_s, float, 0.1),
            url_max_redirects=int(number("WORKER_URL_MAX_REDIRECTS", cls.url_max_redirects, int, 0)),
            job_timeout_s=number("WORKER_JOB_TIMEOUT_S", cls.job_timeout_s, float, 1.0),
            allow_private_urls=flag in ("1", "true", "yes"),
            max_response_bytes=int(
                number("WORKER_MAX_RESPONSE_BYTES", cls.max_response_bytes, int, 10_000)),
            stream_chunk_bytes=int(
                number("WORKER_STREAM_CHUNK_BYTES", cls.stream_chunk_bytes, int, 10_000)),
            ref_text_cache=int(number("WORKER_REF_TEXT_CACHE", cls.ref_text_cache, int, 0)),
            voices_dir=Path(voices) if voices else base / "voices",
            bucket_endpoint_url=env.get("BUCKET_ENDPOINT_URL", "").strip() or None,
            bucket_name=env.get("BUCKET_NAME", "").strip() or None,
        )
        if issues:
            raise LimitsError("config: " + "; ".join(issues))
        return limits
