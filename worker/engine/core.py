"""The worker's engine: warm F5-TTS synthesis + WhisperX transcription and alignment behind one object.

Importing this module loads nothing heavy; `Engine.load(config)` does all the loading, once. The job
layer (worker/queue/handler.py and friends) only talks to the types and methods below.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from worker.errors import DeviceError, EngineError, ModelError
from worker.settings import EngineSettings

log = logging.getLogger(__name__)

TTS_SAMPLE_RATE = 24_000
ASR_SAMPLE_RATE = 16_000


@dataclass(frozen=True)
class Word:
    word: str
    start: float
    end: float
    score: float | None = None


@dataclass(frozen=True)
class Segment:
    text: str
    start: float
    end: float
    words: tuple[Word, ...] = ()


@dataclass(frozen=True)
class Transcript:
    text: str
    language: str
    segments: tuple[Segment, ...]
    words: tuple[Word, ...]


@dataclass(frozen=True)
class SynthesisParams:
    speed: float = 1.0
    nfe_step: int = 32
    cfg_strength: float = 2.0
    sway_sampling_coef: float = -1.0
    seed: int | None = None
    cross_fade_s: float = 0.15
    # Streams: a short first batch (at most this many UTF-8 bytes of text) so audio starts sooner; the
    # rest is batched as usual. None: the worker's F5_FIRST_CHUNK_CHARS (default 0: upstream batching).
    first_chunk_chars: int | None = None
    # Called before each batch and each ODE step; what it raises stops the synthesis (a job's deadline).
    check: Callable[[], None] | None = None


def pick_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise DeviceError("WORKER_DEVICE", "cuda, but no CUDA device is visible (torch.cuda.is_available() "
                          "is False); use auto or cpu to run without one")
    return name


def _check_audio(audio: np.ndarray, field: str) -> np.ndarray:
    arr = np.asarray(audio)
    if arr.ndim != 1 or arr.size == 0:
        raise EngineError(field, f"expected non-empty mono audio, got shape {arr.shape}")
    arr = arr.astype(np.float32, copy=False)
    if not np.isfinite(arr).all():
        raise EngineError(field, "audio holds NaN or infinite samples")
    return arr


def _time(value: object) -> float | None:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _words(raw: list[dict], limit: float) -> tuple[Word, ...]:
    """WhisperX words -> Word, times clamped into the audio and monotonic. WhisperX leaves the words it
    cannot align (digits, symbols) without times: they are kept (the text stays whole, in the words and
    the subtitles) and take the end of the word before them, so every time is a number."""
    out: list[Word] = []
    last = 0.0
    for w in raw:
        start, end = _time(w.get("start")), _time(w.get("end"))
        start = min(out[-1].end if out else 0.0, limit) if start is None else min(max(start, last), limit)
        end = start if end is None else min(max(end, start), limit)
        score = _time(w.get("score"))
        out.append(Word(str(w.get("word", "")), round(start, 3), round(end, 3), score))
        last = start
    return tuple(out)


class Engine:
    """Warm models; `synthesize`, `transcribe` and `align` run on the calling thread."""

    sample_rate: int = TTS_SAMPLE_RATE
    asr_sample_rate: int = ASR_SAMPLE_RATE

    def __init__(self, config: EngineSettings, tts, asr, device: str) -> None:
        self.config = config
        self.tts = tts
        self.asr = asr
        self.device = device

    @classmethod
    def load(cls, config: EngineSettings, paths: dict[str, object] | None = None) -> Engine:
        """Loads every model; ``paths`` are ``resolve_models(config)``'s (resolved here when None)."""
        from worker.engine import compile_cache, tts, tts_load
        from worker.engine.asr import WhisperX

        os.environ.setdefault("PYANNOTE_METRICS_ENABLED", "0")
        os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
        import torch

        device = pick_device(config.device)
        started = time.monotonic()
        paths = resolve_models(config) if paths is None else paths
        go_offline()
        _use_nltk_dir(config)
        if config.f5_compile:
            compile_cache.prepare_compile(config)
        dtype = tts_load.resolve_dtype(config.f5_dtype, device)
        arch = tts_load.load_arch(config.f5_arch)
        cfm = tts_load.load_cfm(arch, paths["ckpt"], paths["vocab"], device, dtype)
        vocos = tts_load.load_vocos(paths["vocoder"], device)
        synth = tts.F5Synth(
            cfm, vocos, device, sampler=config.f5_sampler,
            # Padding only pays for itself where graphs are replayed per bucket.
            bucket_frames=config.f5_bucket_frames if device == "cuda" else 1,
            cuda_graphs=config.f5_cuda_graphs,
            compile_mode=config.f5_compile_mode if config.f5_compile else None,
            first_chunk_chars=config.f5_first_chunk_chars,
            length_snap=config.f5_length_snap,
            batch_rows=config.f5_batch_rows,
            batch_window_s=config.f5_batch_window_ms / 1000,
        )
        synth.max_ref_seconds = config.max_ref_seconds  # WORKER_MAX_REF_SECONDS: the engine's cap too
        log.info("engine: F5-TTS loaded (%s, %s, sampler=%s, graphs=%s) in %.1f s", device, dtype,
                 config.f5_sampler, synth.cuda_graphs, time.monotonic() - started)
        align_dirs = {k.removeprefix("align:"): v for k, v in paths.items() if k.startswith("align:")}
        asr = WhisperX(paths["whisper"], align_dirs, config.default_language, device,
                       config.whisper_compute_type, config.whisper_batch_size, config.whisper_vad)
        torch.set_grad_enabled(False)
        log.info("engine: all models loaded in %.1f s", time.monotonic() - started)
        return cls(config, synth, asr, device)

    @property
    def max_ref_seconds(self) -> float:
        """The longest reference ``synthesize`` takes (WORKER_MAX_REF_SECONDS)."""
        return self.tts.max_ref_seconds

    def warmup(self) -> None:
        """One real inference of each model, so the first job pays no lazy initialisation."""
        started = time.monotonic()
        t = np.arange(self.sample_rate, dtype=np.float32) / self.sample_rate
        ref = (0.1 * np.sin(2 * np.pi * 220.0 * t)).astype(np.float32)
        audio = np.concatenate(list(self.synthesize("Warm up.", ref, "Warm up.", SynthesisParams(seed=0,
                                                                                                  nfe_step=4))))
        speech = _resample(audio, self.sample_rate, self.asr_sample_rate)
        self.transcribe(speech, language=self.config.default_language, word_timestamps=False)
        self.align(speech, "warm up", self.config.default_language)
        if getattr(self.tts, "cuda_graphs", False):
            # One graph per length bucket up to upstream's per-batch budget (~22 s), captured now so no
            # request pays a capture.
            from worker.engine.tts_load import HOP
            from worker.engine.tts_text import BATCH_SECONDS

            try:
                self.tts.capture_buckets(int(BATCH_SECONDS * self.sample_rate / HOP) + 1)
            except RuntimeError as exc:
                # A capture failure must not keep the worker from serving: the eager path is the same math.
                log.warning("engine: CUDA graph capture failed (%s); synthesizing without graphs", exc)
                self.tts.disable_graphs()
        log.info("engine: warm-up done in %.1f s", time.monotonic() - started)

    def synthesize(self, text: str, ref_audio: np.ndarray, ref_text: str,
                   params: SynthesisParams) -> Iterator[np.ndarray]:
        """Checks the inputs now (EngineError naming the field), then returns an iterator that makes the
        audio batch by batch as it is consumed."""
        ref = self._check_params(ref_audio, params)
        return self.tts.synthesize(
            text, ref, ref_text, speed=params.speed, nfe_step=params.nfe_step,
            cfg_strength=params.cfg_strength, sway_sampling_coef=params.sway_sampling_coef,
            seed=params.seed, cross_fade_s=params.cross_fade_s,
            first_chunk_chars=params.first_chunk_chars, check=params.check,
        )

    def planned_seconds(self, text: str, ref_audio: np.ndarray, ref_text: str,
                        params: SynthesisParams) -> float:
        """How long the audio of ``synthesize`` with these inputs will be at least, before making it
        (EngineError naming the field for inputs it would refuse)."""
        ref = self._check_params(ref_audio, params)
        prepared = self.tts.prepare(text, ref, ref_text, speed=params.speed, seed=params.seed or 0,
                                    first_chunk_chars=params.first_chunk_chars)
        return self.tts.planned_seconds(prepared, params.speed, params.cross_fade_s)

    @staticmethod
    def _check_params(ref_audio: np.ndarray, params: SynthesisParams) -> np.ndarray:
        ref = _check_audio(ref_audio, "ref_audio")
        if params.nfe_step < 1:
            raise EngineError("nfe_step", f"{params.nfe_step} must be >= 1")
        if not params.speed > 0:
            raise EngineError("speed", f"{params.speed} must be > 0")
        return ref

    def transcribe(self, audio: np.ndarray, language: str | None = None,
                   word_timestamps: bool = True) -> Transcript:
        audio = _check_audio(audio, "audio")
        if language is not None:
            from faster_whisper.tokenizer import _LANGUAGE_CODES

            if language not in _LANGUAGE_CODES:
                raise EngineError("language",
                                  f"{language!r} is not a Whisper language code (e.g. en, de, fr)")
        limit = len(audio) / self.asr_sample_rate
        result = self.asr.transcribe(audio, language)
        lang = result.get("language") or language or self.config.default_language
        segments = result["segments"]
        if word_timestamps and segments:
            if language is None and lang not in self.asr.align_dirs:
                # A detected language without an alignment model: the text is still useful, untimed.
                log.warning("engine: no alignment model for detected language %r; words left out", lang)
            else:
                segments = self._align_segments(segments, audio, lang)
        out_segments = tuple(
            Segment(s["text"].strip(), round(min(float(s["start"]), limit), 3),
                    round(min(float(s["end"]), limit), 3), _words(s.get("words", []), limit))
            for s in segments
        )
        words = tuple(w for s in out_segments for w in s.words)
        text = " ".join(s.text for s in out_segments if s.text).strip()
        return Transcript(text, lang, out_segments, words)

    def align(self, audio: np.ndarray, text: str, language: str) -> tuple[Word, ...]:
        audio = _check_audio(audio, "audio")
        if not text.strip():
            raise EngineError("text", "empty; nothing to align")
        limit = len(audio) / self.asr_sample_rate
        segments = self._align_segments([{"text": text, "start": 0.0, "end": limit}], audio, language)
        return tuple(w for s in segments for w in _words(s.get("words", []), limit))

    def _align_segments(self, segments: list[dict], audio: np.ndarray, language: str) -> list[dict]:
        return self.asr.align(segments, audio, language)["segments"]


def _resample(audio: np.ndarray, src: int, dst: int) -> np.ndarray:
    import torch
    import torchaudio

    tensor = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32)).unsqueeze(0)
    return torchaudio.functional.resample(tensor, src, dst).squeeze(0).numpy()


def resolve_models(config: EngineSettings) -> dict[str, object]:
    """Every model spec of the config -> a local path (downloading pinned hub revisions once)."""
    from importlib.resources import files

    from worker.engine import model_files
    from worker.engine.models import resolve, whisperx_align_default
    from worker.settings import WHISPERX_DEFAULT

    def get(spec: str, var: str, needs: model_files.ModelFiles):
        # Only the files each model's loader reads are fetched (worker/engine/model_files.py).
        return resolve(spec, config.models_dir, var, token=config.hf_token, needs=needs,
                       torchaudio_url=config.torchaudio_url)

    paths: dict[str, object] = {
        "ckpt": _ckpt_file(get(config.f5_ckpt, "F5_CKPT", model_files.F5_CHECKPOINT)),
        "vocab": (_vocab_file(get(config.f5_vocab, "F5_VOCAB", model_files.F5_VOCAB)) if config.f5_vocab
                  else Path(str(files("f5_tts").joinpath("infer/examples/vocab.txt")))),
        "vocoder": get(config.f5_vocoder, "F5_VOCODER", model_files.VOCOS),
        "whisper": get(config.whisper_model, "WHISPER_MODEL", model_files.WHISPER),
    }
    for lang, spec in config.align_models.items():
        var = f"ALIGN_MODELS[{lang}]"
        if spec == WHISPERX_DEFAULT:
            spec = whisperx_align_default(lang, var)
        paths[f"align:{lang}"] = get(spec, var, model_files.WAV2VEC2)
    return paths


def go_offline() -> None:
    """Every model is on local disk now: keep huggingface_hub (and transformers through it) off the hub
    for the life of the process. The variables alone are not enough once huggingface_hub is imported
    (it reads them at import, and caches HTTP sessions), so its constant and sessions are reset too."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:
        constants.HF_HUB_OFFLINE = True
        # Sessions made while online are cached without the offline adapter: drop them.
        from huggingface_hub.utils import reset_sessions

        reset_sessions()


def _ckpt_file(path):
    if path.is_dir():
        found = sorted(p for p in path.iterdir() if p.suffix in (".safetensors", ".pt"))
        if len(found) != 1:
            raise ModelError("F5_CKPT", f"directory {path} must hold one .safetensors/.pt file, "
                              f"found {len(found)}; point F5_CKPT at the file")
        return found[0]
    return path


def _vocab_file(path):
    return path / "vocab.txt" if path.is_dir() else path


def _use_nltk_dir(config: EngineSettings) -> None:
    import nltk
    from whisperx.utils import PUNKT_LANGUAGES

    from worker.engine.models import write_punkt_tab

    write_punkt_tab(config.nltk_dir, tuple(sorted({*PUNKT_LANGUAGES.values(), "english"})))
    if str(config.nltk_dir) not in nltk.data.path:
        nltk.data.path.insert(0, str(config.nltk_dir))
