"""The worker's settings, read once from the environment into frozen values: ``Settings.from_env()``.

One module, one parser per value type (``_text``, ``_flag``, ``_number`` (int or float), ``_choice``), one
boolean vocabulary (1/true/yes/on, 0/false/no/off), the volume resolved once (``volume_of``). Every
issue is collected before one ``SettingsError`` names them all. ``Settings`` holds ``engine``
(``EngineSettings``: models, device, sampler) and ``jobs`` (``JobSettings``: limits and delivery);
``mode()`` and ``ServingSettings`` (the http mode's listeners) are read apart, before them.

Engine variables. Every variable is optional; the defaults serve the production endpoint
(F5TTS_v1_Base + WhisperX on a GPU, models on the network volume). A model source is either a local
directory (first-class: used as is, nothing is downloaded) or a Hugging Face repo id pinned by revision,
downloaded once onto the volume.

| variable | default | meaning |
| --- | --- | --- |
| WORKER_VOLUME | $BOOTSTRAP_VOLUME, else the installer's default | volume; models go in `<volume>/models` |
| WORKER_MAX_REF_SECONDS | 20 | longest reference audio for TTS (refused on decode, before the engine) |
| WORKER_DEVICE | auto | cuda, cpu or auto (cuda when available) |
| F5_ARCH | F5TTS_v1_Base | f5_tts config name, or a JSON file of DiT arguments |
| F5_CKPT | hf:SWivid/F5-TTS@<rev>:F5TTS_v1_Base/model_1250000.safetensors | checkpoint file/dir or hf: spec |
| F5_VOCAB | (the vocab.txt shipped in f5_tts) | vocab file, dir, or hf: spec |
| F5_VOCODER | hf:charactr/vocos-mel-24khz@<rev> | vocos dir (config.yaml + pytorch_model.bin) or hf: spec |
| F5_DTYPE | auto | float16 (auto on cuda), bfloat16 or float32 (auto on cpu) for the DiT; vocos stays fp32 |
| F5_SAMPLER | fast | fast (the engine's own ODE loop) or upstream (f5_tts CFM.sample, for comparison) |
| F5_CUDA_GRAPHS | 1 | capture one ODE step per padded-length bucket as a CUDA graph (cuda only) |
| F5_COMPILE | 0 | torch.compile the DiT step in the graphs (F5_COMPILE_MODE, default); needs a C compiler |
| TORCHINDUCTOR_CACHE_DIR | <volume>/cache/torchinductor | F5_COMPILE=1: the compiled kernels' cache |
| F5_BUCKET_FRAMES | 64 | cuda: pad mel length to a multiple of this (masked), so graphs are reused |
| F5_LENGTH_SNAP | 0 | cuda: round a batch's length up to the bucket instead (no mask; <= 1 bucket longer) |
| F5_FIRST_CHUNK_CHARS | 0 | >0: the first text batch holds at most this many bytes (earlier stream start) |
| F5_BATCH_ROWS | 1 | >1: concurrent requests share one ODE, up to this many rows (off: no gain on an H200) |
| F5_BATCH_WINDOW_MS | 10 | how long a batch waits for the requests in flight (a lone one never waits) |
| WHISPER_MODEL | hf:Systran/faster-whisper-large-v3@<rev> | CTranslate2 Whisper dir or hf: spec |
| WHISPER_COMPUTE_TYPE | auto | float16 on cuda, int8 on cpu; any CTranslate2 compute type |
| WHISPER_BATCH_SIZE | 8 | WhisperX batched-inference size |
| WHISPER_VAD | pyannote | pyannote (the VAD shipped with whisperx) or none (whole clip, 30 s windows) |
| ALIGN_MODELS | en | alignment languages, `lang` (WhisperX's default model) or `lang=spec`, `,`-separated |
| ALIGN_TORCHAUDIO_URL | https://download.pytorch.org/torchaudio/models | torchaudio weights' base URL |
| DEFAULT_LANGUAGE | en | its alignment model loads at startup; others load on first use and stay |
| NLTK_DATA | <volume>/models/nltk | where WhisperX's sentence splitter looks for punkt_tab |
| HF_TOKEN | (unset) | only for private repos |

`hf:` specs read `hf:<repo_id>@<revision>[:<file in repo>]`; a revision must be given (a commit hash
is best) so every worker loads the same bytes. `torchaudio:<BUNDLE>` names a torchaudio pipeline bundle
(WhisperX's defaults for en, fr, de, es, it are such bundles); its weights are fetched once onto the volume.
An alignment entry without a spec (`ALIGN_MODELS=en,fr`) takes WhisperX 3.8.6's default for the language
(worker/engine/models.py, ``whisperx_align_default``), resolved at startup.

Job variables (all optional; defaults in brackets):

``WORKER_MAX_TEXT_CHARS`` [5000]           longest ``text`` a TTS job may ask for
``WORKER_MAX_AUDIO_BYTES`` [25000000]      largest reference/input audio file (decoded bytes)
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
``WORKER_VOICES_DIR`` [<volume>/voices]    preset voices: <name>.wav + <name>.txt
``WORKER_STREAMING`` [0]                   0: plain handler (output is the dict itself, inline up to
                                           WORKER_MAX_RESPONSE_BYTES); 1: generator handler (stream: true
                                           streams; every output a list, each item <= 1 MB)
``WORKER_LOG_LEVEL`` [INFO]                log level of ``python -m worker``
``WORKER_MODE`` [queue]                    queue (the runpod job handler) or http (worker/serving)
``BUCKET_ENDPOINT_URL``, ``BUCKET_ACCESS_KEY_ID``, ``BUCKET_SECRET_ACCESS_KEY`` (read by runpod's
    ``rp_upload``) and ``BUCKET_NAME`` [month-year, runpod's default]: where outputs over the response
    limit are uploaded; without them such outputs fail with an error naming the limit.

The http mode's variables (``ServingSettings``, read only with WORKER_MODE=http):

``PORT`` [80]                    the HTTP app's port (RunPod load-balancing endpoints set it)
``PORT_HEALTH`` [PORT]           the port of ``GET /ping``; another port: a second listener serves only /ping
``WORKER_HTTP_HOST`` [0.0.0.0]   the address both listen on
``WORKER_MAX_INFLIGHT`` [2]      requests worked on at once (speech, transcription, jobs); one more is
                                 answered 429 with Retry-After at once: a load-balancing endpoint has no
                                 queue, so the worker sheds load itself instead of letting requests
                                 pile up into RunPod's ~5.5 min cut
``WORKER_RETRY_AFTER_S`` [2]     the Retry-After of a 429 (and of a 503 while the models load)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from worker.bootstrap.config import DEFAULT_VOLUME
from worker.errors import Issue, SettingsError

# The default repos' revisions. No commit hash could be looked up from this offline workplace, so the
# defaults name the branch; set a commit hash in the variable (hf:repo@<sha>) to pin a deployment. The
# download marker records the revision the files were fetched at (worker/engine/models.py).
F5_REPO_REV = "main"
VOCOS_REV = "main"
WHISPER_REV = "main"
ALIGN_HF_REV = "main"  # the revision of WhisperX's Hugging Face alignment defaults

DEFAULT_F5_CKPT = f"hf:SWivid/F5-TTS@{F5_REPO_REV}:F5TTS_v1_Base/model_1250000.safetensors"
DEFAULT_VOCODER = f"hf:charactr/vocos-mel-24khz@{VOCOS_REV}"
DEFAULT_WHISPER = f"hf:Systran/faster-whisper-large-v3@{WHISPER_REV}"
# An alignment language with no spec: WhisperX's own default model for it (torchaudio bundle or hub repo).
WHISPERX_DEFAULT = "whisperx"
DEFAULT_ALIGN = "en"
DEFAULT_TORCHAUDIO_URL = "https://download.pytorch.org/torchaudio/models"

TRUE = ("1", "true", "yes", "on")
FALSE = ("0", "false", "no", "off")


class _Env:
    """The environment being read, and every issue found in it so far."""

    def __init__(self, env: Mapping[str, str] | None) -> None:
        self.env = os.environ if env is None else env
        self.issues: list[Issue] = []

    def get(self, name: str, default: str = "") -> str:
        return self.env.get(name, default)

    def bad(self, name: str, why: str, value: Any) -> None:
        self.issues.append(Issue(name, why, value))

    def check(self) -> None:
        if self.issues:
            raise SettingsError.collected(self.issues)


# -- one parser per value type: a malformed value is recorded and the default used, so every issue of
#    the environment is reported at once.
def _text(env: _Env, name: str, default: str = "") -> str:
    return env.get(name, "").strip() or default


def _flag(env: _Env, name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in TRUE or raw in FALSE:
        return raw in TRUE
    env.bad(name, "is not a boolean (use 1 or 0)", raw)
    return default


def _number(env: _Env, name: str, default: Any, minimum: float, kind: type = float,
            maximum: float | None = None) -> Any:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        env.bad(name, f"is not {'an integer' if kind is int else 'a number'}", raw)
        return default
    if maximum is not None and not minimum <= value <= maximum:
        env.bad(name, f"must be from {minimum:g} to {maximum:g}", raw)
        return default
    if value < minimum:
        env.bad(name, f"must be at least {minimum:g}", raw)
        return default
    return value


def _choice(env: _Env, name: str, default: str, choices: tuple[str, ...], *, fold: bool = False) -> str:
    value = env.get(name, "").strip() or default
    value = value.lower() if fold else value
    if value not in choices:
        env.bad(name, f"must be one of {', '.join(choices)}", value)
        return default
    return value


def volume_of(env: Mapping[str, str] | None = None) -> Path:
    """The volume: WORKER_VOLUME, else the one the installer really used (it exports BOOTSTRAP_VOLUME,
    maybe the container-disk fallback), else the bootstrap's default mount."""
    env = os.environ if env is None else env
    return Path(env.get("WORKER_VOLUME", "").strip() or env.get("BOOTSTRAP_VOLUME", "").strip()
                or DEFAULT_VOLUME)


def log_level(env: Mapping[str, str] | None = None) -> str:
    """WORKER_LOG_LEVEL, read before the rest so that a settings error is logged."""
    return _text(_Env(env), "WORKER_LOG_LEVEL", "INFO").upper()


def parse_align_models(raw: str, env: _Env | None = None) -> dict[str, str]:
    """`en,de=spec` -> {"en": WHISPERX_DEFAULT, "de": spec}; a spec may itself contain '=' only after the
    first one."""
    out: dict[str, str] = {}
    issues = env if env is not None else _Env({})
    for item in filter(None, (part.strip() for part in raw.split(","))):
        lang, sep, spec = item.partition("=")
        if not lang.strip() or (sep and not spec.strip()):
            issues.bad("ALIGN_MODELS", f"item {item!r} is not lang or lang=model", raw)
            continue
        out[lang.strip()] = spec.strip() if sep else WHISPERX_DEFAULT
    if env is None:
        issues.check()
    return out


@dataclass(frozen=True)
class EngineSettings:
    volume: Path = Path(DEFAULT_VOLUME)
    device: str = "auto"
    f5_arch: str = "F5TTS_v1_Base"
    f5_ckpt: str = DEFAULT_F5_CKPT
    f5_vocab: str = ""
    f5_vocoder: str = DEFAULT_VOCODER
    f5_dtype: str = "auto"
    f5_sampler: str = "fast"
    f5_cuda_graphs: bool = True
    f5_compile: bool = False
    f5_compile_mode: str = "default"
    compile_cache_dir: Path | None = None  # None: <volume>/cache/torchinductor (worker/engine/compile_cache)
    f5_bucket_frames: int = 64
    f5_length_snap: bool = False
    f5_first_chunk_chars: int = 0
    f5_batch_rows: int = 1
    f5_batch_window_ms: int = 10
    max_ref_seconds: float = 20.0
    whisper_model: str = DEFAULT_WHISPER
    whisper_compute_type: str = "auto"
    whisper_batch_size: int = 8
    whisper_vad: str = "pyannote"
    align_models: Mapping[str, str] = field(default_factory=lambda: parse_align_models(DEFAULT_ALIGN))
    default_language: str = "en"
    nltk_data: Path | None = None
    hf_token: str | None = None
    torchaudio_url: str = DEFAULT_TORCHAUDIO_URL

    @property
    def models_dir(self) -> Path:
        return self.volume / "models"

    @property
    def nltk_dir(self) -> Path:
        return self.nltk_data if self.nltk_data is not None else self.models_dir / "nltk"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, volume: Path | None = None) -> EngineSettings:
        reader = _Env(env)
        settings = cls.read(reader, volume_of(reader.env) if volume is None else volume)
        reader.check()
        return settings

    @classmethod
    def read(cls, env: _Env, volume: Path) -> EngineSettings:
        d = cls
        align = parse_align_models(_text(env, "ALIGN_MODELS", DEFAULT_ALIGN), env)
        default_language = _text(env, "DEFAULT_LANGUAGE", d.default_language)
        if align and default_language not in align:
            env.bad("DEFAULT_LANGUAGE",
                    f"has no alignment model in ALIGN_MODELS (has: {', '.join(sorted(align))}); add "
                    f"{default_language} (WhisperX's default) or {default_language}=<dir or hf:repo@rev>",
                    default_language)
        nltk = _text(env, "NLTK_DATA")
        kernels = _text(env, "TORCHINDUCTOR_CACHE_DIR")  # read before torch: inductor writes its default in
        return cls(
            volume=volume,
            device=_choice(env, "WORKER_DEVICE", d.device, ("auto", "cuda", "cpu")),
            f5_arch=_text(env, "F5_ARCH", d.f5_arch),
            f5_ckpt=_text(env, "F5_CKPT", d.f5_ckpt),
            f5_vocab=_text(env, "F5_VOCAB", d.f5_vocab),
            f5_vocoder=_text(env, "F5_VOCODER", d.f5_vocoder),
            f5_dtype=_choice(env, "F5_DTYPE", d.f5_dtype, ("auto", "float16", "bfloat16", "float32")),
            f5_sampler=_choice(env, "F5_SAMPLER", d.f5_sampler, ("fast", "upstream")),
            f5_cuda_graphs=_flag(env, "F5_CUDA_GRAPHS", d.f5_cuda_graphs),
            f5_compile=_flag(env, "F5_COMPILE", d.f5_compile),
            f5_compile_mode=_text(env, "F5_COMPILE_MODE", d.f5_compile_mode),
            compile_cache_dir=Path(kernels) if kernels else None,
            f5_bucket_frames=_number(env, "F5_BUCKET_FRAMES", d.f5_bucket_frames, 1, int),
            f5_length_snap=_flag(env, "F5_LENGTH_SNAP", d.f5_length_snap),
            f5_first_chunk_chars=_number(env, "F5_FIRST_CHUNK_CHARS", d.f5_first_chunk_chars, 0, int),
            f5_batch_rows=_number(env, "F5_BATCH_ROWS", d.f5_batch_rows, 1, int),
            f5_batch_window_ms=_number(env, "F5_BATCH_WINDOW_MS", d.f5_batch_window_ms, 0, int),
            max_ref_seconds=_number(env, "WORKER_MAX_REF_SECONDS", d.max_ref_seconds, 0.5),
            whisper_model=_text(env, "WHISPER_MODEL", d.whisper_model),
            whisper_compute_type=_text(env, "WHISPER_COMPUTE_TYPE", d.whisper_compute_type),
            whisper_batch_size=_number(env, "WHISPER_BATCH_SIZE", d.whisper_batch_size, 1, int),
            whisper_vad=_choice(env, "WHISPER_VAD", d.whisper_vad, ("pyannote", "none")),
            align_models=align,
            default_language=default_language,
            nltk_data=Path(nltk) if nltk else None,
            hf_token=_text(env, "HF_TOKEN") or None,
            torchaudio_url=_text(env, "ALIGN_TORCHAUDIO_URL").rstrip("/") or d.torchaudio_url,
        )


@dataclass(frozen=True)
class JobSettings:
    max_text_chars: int = 5000
    max_audio_bytes: int = 25_000_000
    max_transcribe_seconds: float = 1800.0
    url_timeout_s: float = 20.0
    url_max_redirects: int = 5
    job_timeout_s: float = 300.0
    allow_private_urls: bool = False
    max_response_bytes: int = 9_500_000
    stream_chunk_bytes: int = 1_000_000
    ref_text_cache: int = 256
    voices_dir: Path = Path(DEFAULT_VOLUME) / "voices"
    streaming: bool = False
    bucket_endpoint_url: str | None = None
    bucket_name: str | None = None

    @property
    def s3_configured(self) -> bool:
        return bool(self.bucket_endpoint_url)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, volume: str | os.PathLike | None = None
                 ) -> JobSettings:
        """Read the job variables; ``volume`` (the worker's volume dir) places the voices dir."""
        reader = _Env(env)
        settings = cls.read(reader, volume_of(reader.env) if volume is None else Path(volume))
        reader.check()
        return settings

    @classmethod
    def read(cls, env: _Env, volume: Path) -> JobSettings:
        d = cls
        voices = _text(env, "WORKER_VOICES_DIR")
        return cls(
            max_text_chars=_number(env, "WORKER_MAX_TEXT_CHARS", d.max_text_chars, 1, int),
            max_audio_bytes=_number(env, "WORKER_MAX_AUDIO_BYTES", d.max_audio_bytes, 1024, int),
            max_transcribe_seconds=_number(env, "WORKER_MAX_TRANSCRIBE_SECONDS", d.max_transcribe_seconds, 1),
            url_timeout_s=_number(env, "WORKER_URL_TIMEOUT_S", d.url_timeout_s, 0.1),
            url_max_redirects=_number(env, "WORKER_URL_MAX_REDIRECTS", d.url_max_redirects, 0, int),
            job_timeout_s=_number(env, "WORKER_JOB_TIMEOUT_S", d.job_timeout_s, 1),
            allow_private_urls=_flag(env, "WORKER_ALLOW_PRIVATE_URLS", d.allow_private_urls),
            max_response_bytes=_number(env, "WORKER_MAX_RESPONSE_BYTES", d.max_response_bytes, 10_000, int),
            stream_chunk_bytes=_number(env, "WORKER_STREAM_CHUNK_BYTES", d.stream_chunk_bytes, 10_000, int),
            ref_text_cache=_number(env, "WORKER_REF_TEXT_CACHE", d.ref_text_cache, 0, int),
            voices_dir=Path(voices) if voices else volume / "voices",
            streaming=_flag(env, "WORKER_STREAMING", d.streaming),
            bucket_endpoint_url=_text(env, "BUCKET_ENDPOINT_URL") or None,
            bucket_name=_text(env, "BUCKET_NAME") or None,
        )


MODES = ("queue", "http")


def mode(env: Mapping[str, str] | None = None) -> str:
    """``WORKER_MODE``: queue (the default, the runpod handler) or http (worker/serving); read before the
    rest, since it decides which settings the worker needs."""
    reader = _Env(env)
    value = _choice(reader, "WORKER_MODE", "queue", MODES, fold=True)
    reader.check()
    return value


@dataclass(frozen=True)
class ServingSettings:
    """The http mode's listeners and load shedding; read only in that mode (a queue worker never needs a
    PORT)."""

    host: str = "0.0.0.0"
    port: int = 80
    health_port: int = 80
    max_inflight: int = 2
    retry_after_s: int = 2

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ServingSettings:
        reader = _Env(env)
        d = cls
        port = _number(reader, "PORT", d.port, 1, int, 65535)
        settings = cls(
            host=_text(reader, "WORKER_HTTP_HOST", d.host),
            port=port,
            health_port=_number(reader, "PORT_HEALTH", port, 1, int, 65535),
            max_inflight=_number(reader, "WORKER_MAX_INFLIGHT", d.max_inflight, 1, int, 1024),
            retry_after_s=_number(reader, "WORKER_RETRY_AFTER_S", d.retry_after_s, 0, int, 3600),
        )
        reader.check()
        return settings


@dataclass(frozen=True)
class Settings:
    """Everything ``python -m worker`` is configured with, read at once (every issue reported together)."""

    engine: EngineSettings = field(default_factory=EngineSettings)
    jobs: JobSettings = field(default_factory=JobSettings)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        reader = _Env(env)
        volume = volume_of(reader.env)
        settings = cls(EngineSettings.read(reader, volume), JobSettings.read(reader, volume))
        reader.check()
        return settings
