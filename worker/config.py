"""The worker's configuration, read once from the environment into a frozen value.

Every variable is optional; the defaults serve the production endpoint (F5TTS_v1_Base + WhisperX on a
GPU, models on the network volume). A model source is either a local directory (first-class: used as is,
nothing is downloaded) or a Hugging Face repo id pinned by revision, downloaded once onto the volume.

| variable | default | meaning |
| --- | --- | --- |
| WORKER_VOLUME | $BOOTSTRAP_VOLUME, else /runpod-volume | volume; models go under `<volume>/models` |
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
(worker/models.py, ``whisperx_align_default``), resolved at startup.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

# The default repos' revisions. No commit hash could be looked up from this offline workplace, so the
# defaults name the branch; set a commit hash in the variable (hf:repo@<sha>) to pin a deployment. The
# download marker records the revision the files were fetched at (worker/models.py).
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


class ConfigError(ValueError):
    """A variable has a value the worker cannot use; the message names it."""


def _flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"config: {name}={raw!r} is not a boolean (use 1 or 0)")


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"config: {name}={raw!r} is not an integer") from None
    if value < minimum:
        raise ConfigError(f"config: {name}={value} must be >= {minimum}")
    return value


def _choice(env: Mapping[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    value = env.get(name, "").strip() or default
    if value not in choices:
        raise ConfigError(f"config: {name}={value!r} must be one of {', '.join(choices)}")
    return value


def parse_align_models(raw: str) -> dict[str, str]:
    """`en,de=spec` -> {"en": WHISPERX_DEFAULT, "de": spec}; a spec may itself contain '=' only after the
    first one."""
    out: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in raw.split(","))):
        lang, sep, spec = item.partition("=")
        if not lang.strip() or (sep and not spec.strip()):
            raise ConfigError(f"config: ALIGN_MODELS item {item!r} is not lang or lang=model")
        out[lang.strip()] = spec.strip() if sep else WHISPERX_DEFAULT
    return out


@dataclass(frozen=True)
class WorkerConfig:
    volume: Path = Path("/runpod-volume")
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
    compile_cache_dir: Path | None = None  # None: <volume>/cache/torchinductor
    f5_bucket_frames: int = 64
    f5_length_snap: bool = False
    f5_first_chunk_chars: int = 0
    f5_batch_rows: int = 1
    f5_batch_window_ms: int = 10
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
    def from_env(cls, env: Mapping[str, str] | None = None) -> WorkerConfig:
        env = os.environ if env is None else env
        align = parse_align_models(env.get("ALIGN_MODELS", "") or DEFAULT_ALIGN)
        default_language = env.get("DEFAULT_LANGUAGE", "").strip() or "en"
        if default_language not in align:
            raise ConfigError(
                f"config: DEFAULT_LANGUAGE={default_language!r} has no alignment model in ALIGN_MODELS "
                f"(has: {', '.join(sorted(align))}); add {default_language} (WhisperX's default) or "
                f"{default_language}=<dir or hf:repo@rev>"
            )
        nltk = env.get("NLTK_DATA", "").strip()
        return cls(
            # The installer exports the volume it really used (maybe the container-disk fallback).
            volume=Path(env.get("WORKER_VOLUME", "").strip() or env.get("BOOTSTRAP_VOLUME", "").strip()
                        or "/runpod-volume"),
            device=_choice(env, "WORKER_DEVICE", "auto", ("auto", "cuda", "cpu")),
            f5_arch=env.get("F5_ARCH", "").strip() or "F5TTS_v1_Base",
            f5_ckpt=env.get("F5_CKPT", "").strip() or DEFAULT_F5_CKPT,
            f5_vocab=env.get("F5_VOCAB", "").strip(),
            f5_vocoder=env.get("F5_VOCODER", "").strip() or DEFAULT_VOCODER,
            f5_dtype=_choice(env, "F5_DTYPE", "auto", ("auto", "float16", "bfloat16", "float32")),
            f5_sampler=_choice(env, "F5_SAMPLER", "fast", ("fast", "upstream")),
            f5_cuda_graphs=_flag(env, "F5_CUDA_GRAPHS", True),
            f5_compile=_flag(env, "F5_COMPILE", False),
            f5_compile_mode=env.get("F5_COMPILE_MODE", "").strip() or "default",
            # Read here, before torch is imported: inductor writes its own default into the variable.
            compile_cache_dir=Path(env["TORCHINDUCTOR_CACHE_DIR"].strip())
            if env.get("TORCHINDUCTOR_CACHE_DIR", "").strip() else None,
            f5_bucket_frames=_int(env, "F5_BUCKET_FRAMES", 64, minimum=1),
            f5_length_snap=_flag(env, "F5_LENGTH_SNAP", False),
            f5_first_chunk_chars=_int(env, "F5_FIRST_CHUNK_CHARS", 0),
            f5_batch_rows=_int(env, "F5_BATCH_ROWS", 1, minimum=1),
            f5_batch_window_ms=_int(env, "F5_BATCH_WINDOW_MS", 10),
            whisper_model=env.get("WHISPER_MODEL", "").strip() or DEFAULT_WHISPER,
            whisper_compute_type=env.get("WHISPER_COMPUTE_TYPE", "").strip() or "auto",
            whisper_batch_size=_int(env, "WHISPER_BATCH_SIZE", 8, minimum=1),
            whisper_vad=_choice(env, "WHISPER_VAD", "pyannote", ("pyannote", "none")),
            align_models=align,
            default_language=default_language,
            nltk_data=Path(nltk) if nltk else None,
            hf_token=env.get("HF_TOKEN", "").strip() or None,
            torchaudio_url=env.get("ALIGN_TORCHAUDIO_URL", "").strip().rstrip("/") or DEFAULT_TORCHAUDIO_URL,
        )
