"""The work of each task, on a loaded engine: TTS (whole or streamed), transcribe, list voices.

Everything here takes a validated request (``worker.jobs.schema``) and returns plain JSON-ready dicts;
turning failures into ``{"error": ...}`` and sizing the response is ``worker.jobs.runner``'s job.

Two bounds hold before and during the work: a job's deadline (``JobDeadline``, WORKER_JOB_TIMEOUT_S),
checked between stages and, inside synthesis, before every batch and ODE step; and, for a WAV answer
whose size is known from its length, the response limit, checked against the planned length before
any synthesis (a job that cannot be delivered is refused in milliseconds, not after minutes of work).
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from worker.engine.core import SynthesisParams, Word
from worker.errors import AudioError, DeliveryError, JobTimeout
from worker.jobs import audio, subtitles
from worker.jobs.schema import TranscribeRequest, TtsRequest
from worker.jobs.urlfetch import FetchPolicy
from worker.jobs.voices import VoiceLibrary
from worker.settings import JobSettings

log = logging.getLogger(__name__)

# WAV: a 44-byte header, then 16-bit samples (the JSON around the audio is left out: a lower bound).
_WAV_HEADER = 44


def too_large(size: int, limit: int, what: str = "") -> DeliveryError:
    return DeliveryError(
        "output", f"the response would be {size} bytes{what}, over the limit of {limit} bytes; configure "
        "an S3 bucket (BUCKET_ENDPOINT_URL, BUCKET_ACCESS_KEY_ID, BUCKET_SECRET_ACCESS_KEY), ask for format "
        "mp3 or ogg, send shorter text, or use stream: true")


class JobDeadline:
    """One job's deadline; ``check`` raises ``JobTimeout`` once it has passed, naming the stage."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.end = time.monotonic() + seconds
        self.stage = "starting"

    def check(self, stage: str | None = None) -> None:
        if stage is not None:
            self.stage = stage
        if time.monotonic() > self.end:
            raise JobTimeout(
                "job", f"ran past its deadline of {self.seconds:g} s (WORKER_JOB_TIMEOUT_S) while "
                f"{self.stage}; send shorter text, a lower nfe_step or a shorter reference, or raise "
                "WORKER_JOB_TIMEOUT_S")

    def in_synthesis(self) -> None:
        self.check("synthesizing")


@dataclass(frozen=True)
class RefTranscript:
    text: str
    language: str | None


class RefTextCache:
    """Transcripts of reference audio by content hash: a bounded LRU, safe across handler threads."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[str, RefTranscript] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> RefTranscript | None:
        with self._lock:
            found = self._items.get(key)
            if found is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return found

    def put(self, key: str, value: RefTranscript) -> None:
        if self.size <= 0:
            return
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)


def words_json(words: Sequence[Word]) -> list[dict]:
    """The engine's words as JSON (their times are already clamped, monotonic and rounded to ms)."""
    return [{"word": w.word, "start": w.start, "end": w.end} for w in words]


@dataclass
class _Reference:
    samples: np.ndarray  # at the engine's TTS rate
    ref_text: str


class Jobs:
    def __init__(self, engine: Any, limits: JobSettings, default_language: str = "en") -> None:
        self.engine = engine
        self.limits = limits
        self.default_language = default_language
        self.voices = VoiceLibrary(limits.voices_dir)
        self.ref_texts = RefTextCache(limits.ref_text_cache)
        self.policy = FetchPolicy(max_bytes=limits.max_audio_bytes, timeout_s=limits.url_timeout_s,
                                  max_redirects=limits.url_max_redirects,
                                  allow_private=limits.allow_private_urls)

    # ---------------------------------------------------------------- voices
    def list_voices(self) -> dict:
        return {"voices": self.voices.describe()}

    # ---------------------------------------------------------------- reference
    def _reference(self, request: TtsRequest, deadline: JobDeadline) -> _Reference:
        deadline.check("fetching the reference")
        if request.voice is not None:
            voice = self.voices.get(request.voice)
            data = voice.audio_path.read_bytes()
            field, given_text = "input.voice", request.ref_text or voice.ref_text
        else:
            data = audio.read_source(request.ref_audio or "", self.policy, "input.ref_audio")
            field, given_text = "input.ref_audio", request.ref_text
        deadline.check("decoding the reference")
        clip = audio.decode(data, field, self.engine.max_ref_seconds)
        samples = audio.to_rate(clip, self.engine.sample_rate)
        if given_text:
            return _Reference(samples, given_text.strip())
        deadline.check("transcribing the reference")
        transcript = self._transcribe_reference(data, clip, request.language)
        if not transcript.text.strip():
            raise AudioError(field, "no speech was recognised in the reference audio; send its "
                                   "transcript in input.ref_text")
        return _Reference(samples, transcript.text.strip())

    def _transcribe_reference(self, data: bytes, clip: audio.Clip, language: str | None) -> RefTranscript:
        key = hashlib.sha256(data).hexdigest() + f":{language or ''}"
        cached = self.ref_texts.get(key)
        if cached is not None:
            return cached
        asr_audio = audio.to_rate(clip, self.engine.asr_sample_rate)
        result = self.engine.transcribe(asr_audio, language=language, word_timestamps=False)
        found = RefTranscript(result.text, result.language or language)
        self.ref_texts.put(key, found)
        log.info("jobs: transcribed a %.1f s reference (%d chars)", clip.duration, len(found.text))
        return found

    def _params(self, request: TtsRequest, deadline: JobDeadline) -> Any:
        return SynthesisParams(speed=request.speed, nfe_step=request.nfe_step,
                               cfg_strength=request.cfg_strength,
                               sway_sampling_coef=request.sway_sampling_coef, seed=request.seed,
                               check=deadline.in_synthesis)

    def _check_size(self, request: TtsRequest, ref: _Reference, params: Any, limit: int) -> None:
        """Refuse before synthesis a WAV answer whose planned length already passes ``limit``."""
        if request.format != "wav":
            return  # compressed sizes depend on the audio: checked once it is encoded
        seconds = self.engine.planned_seconds(request.text, ref.samples, ref.ref_text, params)
        rate = request.sample_rate or self.engine.sample_rate
        wav = _WAV_HEADER + 2 * int(seconds * rate)
        size = 4 * math.ceil(wav / 3)
        if size > limit:
            raise too_large(size, limit, f" at least (the text makes {seconds:.0f} s or more of {rate} Hz "
                                         "WAV; refused before synthesis)")

    def _words(self, request: TtsRequest, samples: np.ndarray) -> tuple[Word, ...]:
        # The language of the text, not the one detected in the reference: cloning across languages
        # is allowed, and a detected language may have no alignment model.
        asr_audio = audio.resample(samples, self.engine.sample_rate, self.engine.asr_sample_rate)
        language = request.language or self.default_language
        return self.engine.align(asr_audio, request.text, language)

    def _annotate(self, request: TtsRequest, out: dict, samples: np.ndarray, timings: dict,
                  deadline: JobDeadline) -> None:
        if request.timestamps or request.subtitles:
            deadline.check("aligning the words")
            started = time.perf_counter()
            words = self._words(request, samples)
            timings["align"] = round(time.perf_counter() - started, 4)
            if request.timestamps:
                out["words"] = words_json(words)
            if request.subtitles:
                out["subtitles"] = subtitles.render(words, request.subtitles)
                out["subtitles_format"] = request.subtitles
        else:
            timings["align"] = 0.0

    # ---------------------------------------------------------------- tts
    def tts(self, request: TtsRequest, deadline: JobDeadline | None = None,
            max_response_bytes: int | None = None) -> tuple[dict, bytes]:
        """The whole output and its encoded audio (the handler decides inline vs. upload). With
        ``max_response_bytes`` (no bucket to upload to), an answer that cannot fit is refused first."""
        deadline = deadline or JobDeadline(self.limits.job_timeout_s)
        start = time.perf_counter()
        ref = self._reference(request, deadline)
        params = self._params(request, deadline)
        if max_response_bytes is not None:
            self._check_size(request, ref, params, max_response_bytes)
        timings: dict = {"prep": round(time.perf_counter() - start, 4)}
        synth_start = time.perf_counter()
        chunks = list(self.engine.synthesize(request.text, ref.samples, ref.ref_text, params))
        samples = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)
        timings["synth"] = round(time.perf_counter() - synth_start, 4)
        rate = request.sample_rate or self.engine.sample_rate
        out: dict = {"format": request.format, "sample_rate": rate,
                     "duration": round(len(samples) / self.engine.sample_rate, 3), "ref_text": ref.ref_text}
        self._annotate(request, out, samples, timings, deadline)
        deadline.check("encoding the audio")
        encoded = audio.encode(audio.resample(samples, self.engine.sample_rate, rate), rate, request.format)
        timings["total"] = round(time.perf_counter() - start, 4)
        out["timings"] = timings
        return out, encoded

    def speech(self, request: TtsRequest, deadline: JobDeadline | None = None
               ) -> tuple[str, Iterator[np.ndarray]]:
        """The reference transcript and the audio as it is made: float32 at the engine's rate, each
        sentence batch as soon as it is ready (concatenated: the whole cross-faded audio), for a front end
        that encodes and delivers it itself (the http mode, worker/serving). The reference is fetched and
        the inputs are checked now; the audio is made as the caller iterates."""
        deadline = deadline or JobDeadline(self.limits.job_timeout_s)
        ref = self._reference(request, deadline)
        params = self._params(request, deadline)
        return ref.ref_text, iter(self.engine.synthesize(request.text, ref.samples, ref.ref_text, params))

    def tts_stream(self, request: TtsRequest, deadline: JobDeadline | None = None) -> Iterator[dict]:
        """Audio pieces as each sentence batch is ready, then one summary item without audio."""
        deadline = deadline or JobDeadline(self.limits.job_timeout_s)
        start = time.perf_counter()
        ref = self._reference(request, deadline)
        timings: dict = {"prep": round(time.perf_counter() - start, 4)}
        rate = request.sample_rate or self.engine.sample_rate
        # Room for the item's other keys; the base64 text is the bulk of every item.
        cap = self.limits.stream_chunk_bytes - 256
        parts: list[np.ndarray] = []
        index = 0
        resampler = audio.StreamResampler(self.engine.sample_rate, rate)
        synth_start = time.perf_counter()
        chunks = self.engine.synthesize(request.text, ref.samples, ref.ref_text,
                                        self._params(request, deadline))
        for chunk in _with_end(chunks):
            if chunk is not None:
                chunk = np.asarray(chunk, dtype=np.float32)
                parts.append(chunk)
            # The resampler holds back a few samples until the next chunk (or the end) arrives.
            ready = resampler.push(chunk if chunk is not None else np.zeros(0, np.float32),
                                   last=chunk is None)
            if ready.size == 0:
                continue
            for piece in audio.encoded_pieces(ready, rate, request.format, cap):
                if index == 0:
                    timings["first_chunk"] = round(time.perf_counter() - start, 4)
                yield {"chunk": index, "audio": piece, "format": request.format, "sample_rate": rate}
                index += 1
        timings["synth"] = round(time.perf_counter() - synth_start, 4)
        samples = np.concatenate(parts) if parts else np.zeros(0, np.float32)
        summary: dict = {"done": True, "chunks": index, "format": request.format, "sample_rate": rate,
                         "duration": round(len(samples) / self.engine.sample_rate, 3),
                         "ref_text": ref.ref_text}
        self._annotate(request, summary, samples, timings, deadline)
        timings["total"] = round(time.perf_counter() - start, 4)
        summary["timings"] = timings
        yield summary

    # ---------------------------------------------------------------- transcribe
    def transcribe(self, request: TranscribeRequest, deadline: JobDeadline | None = None) -> dict:
        deadline = deadline or JobDeadline(self.limits.job_timeout_s)
        start = time.perf_counter()
        deadline.check("fetching the audio")
        data = audio.read_source(request.audio, self.policy, "input.audio")
        deadline.check("decoding the audio")
        # Resampled while it is decoded: 30 minutes at a high rate never sit in memory at that rate.
        clip = audio.decode(data, "input.audio", self.limits.max_transcribe_seconds,
                            rate=self.engine.asr_sample_rate)
        samples = clip.samples
        timings: dict = {"prep": round(time.perf_counter() - start, 4)}
        asr_start = time.perf_counter()
        want_words = request.timestamps or request.subtitles is not None
        deadline.check("transcribing")
        result = self.engine.transcribe(samples, language=request.language, word_timestamps=want_words)
        deadline.check("transcribing")
        timings["transcribe"] = round(time.perf_counter() - asr_start, 4)
        out: dict = {
            "text": result.text, "language": result.language, "duration": round(clip.duration, 3),
            "segments": [{"text": s.text, "start": round(float(s.start), 3), "end": round(float(s.end), 3)}
                         for s in result.segments],
        }
        words = result.words if want_words else ()
        if request.timestamps:
            out["words"] = words_json(words)
        if request.subtitles:
            out["subtitles"] = subtitles.render(words, request.subtitles)
            out["subtitles_format"] = request.subtitles
        timings["total"] = round(time.perf_counter() - start, 4)
        out["timings"] = timings
        return out


def _with_end(chunks: Iterator[np.ndarray]) -> Iterator[np.ndarray | None]:
    """The chunks, then ``None`` for the end."""
    yield from chunks
    yield None

