"""OpenAI's audio request fields -> the job layer's input, and the job layer's output -> OpenAI's shapes.

Only what is OpenAI-specific is checked here (``model`` is there, ``response_format``, ``stream_format``,
the voice's shape, unknown fields, the upload); the rest (``input`` length, ``speed`` range, ``seed``...)
is the job layer's own validation, so both modes refuse the same values with the same words. Every issue
is collected before one error is raised, each naming its field as the caller sent it.

Speech (``POST /v1/audio/speech``, JSON): ``model`` (f5-tts; any name is taken as it, since clients
hard-code OpenAI's tts-1, tts-1-hd, gpt-4o-mini-tts or their own), ``input`` (the text), ``voice`` (a
preset: a name or ``{"id": name}``; ignored when ``ref_audio`` is sent, since OpenAI clients always send
one), ``response_format`` (mp3, opus, aac, flac, wav, pcm; default mp3 as OpenAI's), ``speed``,
``stream_format`` (absent: the whole file once made; ``audio``: the file's bytes as each batch is ready;
``sse``: ``speech.audio.delta`` events), and this worker's extensions ``ref_audio``, ``ref_text``,
``nfe_step``, ``seed``.

Transcription (``POST /v1/audio/transcriptions``, multipart): ``file``, ``model`` (whisperx; any name,
such as whisper-1, is taken as it), ``language``, ``response_format`` (json, text, srt, vtt,
verbose_json), ``timestamp_granularities[]`` (word, segment; verbose_json only), ``temperature``
(accepted and not used: WhisperX decodes greedily).
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from worker.serving.encode import FORMATS
from worker.serving.errors import ApiError

TTS_MODEL = "f5-tts"
ASR_MODEL = "whisperx"
TTS_MODELS = (TTS_MODEL, "tts-1", "tts-1-hd", "gpt-4o-mini-tts")
ASR_MODELS = (ASR_MODEL, "whisper-1", "gpt-4o-transcribe", "gpt-4o-mini-transcribe")
STREAM_FORMATS = ("audio", "sse")
TRANSCRIPT_FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
GRANULARITIES = ("word", "segment")

SPEECH_FIELDS = ("model", "input", "voice", "response_format", "speed", "stream_format",
                 "ref_audio", "ref_text", "nfe_step", "seed")
TRANSCRIBE_FIELDS = ("file", "model", "language", "response_format", "timestamp_granularities[]",
                     "temperature")
# job field -> the field the caller sent
SPEECH_NAMES = {"text": "input", "voice": "voice", "ref_audio": "ref_audio", "ref_text": "ref_text",
                "speed": "speed", "nfe_step": "nfe_step", "seed": "seed"}
TRANSCRIBE_NAMES = {"audio": "file", "language": "language", "subtitles": "response_format",
                    "timestamps": "timestamp_granularities[]"}


class Issues:
    """(field, message) pairs, raised together as one 400 naming the first field."""

    def __init__(self) -> None:
        self.items: list[tuple[str | None, str]] = []

    def add(self, param: str | None, why: str) -> None:
        self.items.append((param, f"{param}: {why}" if param else why))

    def extend(self, err: ApiError) -> None:
        self.items.append((err.param, err.message))

    def raise_any(self) -> None:
        if self.items:
            raise ApiError(400, "; ".join(m for _, m in self.items), self.items[0][0], "invalid_value")


def _unknown(keys: Sequence[str], accepted: Sequence[str], issues: Issues) -> None:
    for key in keys:
        if key not in accepted:
            issues.add(str(key)[:40], f"unknown field; accepted: {', '.join(accepted)}")


def _choice(value: Any, name: str, options: Sequence[str], default: str | None, issues: Issues
            ) -> str | None:
    if value is None:
        return default
    if not isinstance(value, str) or value.strip().lower() not in options:
        issues.add(name, f"must be one of {', '.join(options)} (got {str(value)[:40]!r})")
        return default
    return value.strip().lower()


def _model(value: Any, ours: str, issues: Issues) -> None:
    """Any model name is taken as this worker's one model for the task (clients hard-code OpenAI's
    names, or their own); only its absence or a non-string is an error."""
    if value is None:
        issues.add("model", f"is required ({ours})")
    elif not isinstance(value, str) or not value.strip():
        issues.add("model", f"must be a model name such as {ours} (got {str(value)[:40]!r})")


@dataclass(frozen=True)
class SpeechCall:
    job: dict  # the job layer's input
    response_format: str
    stream_format: str | None


def speech_call(body: Any) -> tuple[SpeechCall, Issues]:
    """The job input of a speech request and the OpenAI-level issues found (not raised yet: the job
    layer's own issues are added to them)."""
    issues = Issues()
    if not isinstance(body, Mapping):
        raise ApiError(400, "the body must be a JSON object with the speech fields", None, "invalid_json")
    _unknown(list(body), SPEECH_FIELDS, issues)
    _model(body.get("model"), TTS_MODEL, issues)
    response_format = _choice(body.get("response_format"), "response_format", FORMATS, "mp3", issues) or "mp3"
    stream_format = _choice(body.get("stream_format"), "stream_format", STREAM_FORMATS, None, issues)
    job: dict = {"task": "tts", "text": body.get("input")}
    for name in ("ref_text", "speed", "nfe_step", "seed"):
        if body.get(name) is not None:
            job[name] = body[name]
    if body.get("ref_audio") is not None:
        job["ref_audio"] = body["ref_audio"]
    else:
        voice = body.get("voice")
        if isinstance(voice, Mapping) and set(voice) == {"id"}:
            voice = voice["id"]
        if voice is None:
            issues.add("voice", "is required: a preset voice (GET /v1/audio/voices), or send ref_audio")
        elif not isinstance(voice, str):
            issues.add("voice", "must be a preset name or {\"id\": name}")
        else:
            job["voice"] = voice
    return SpeechCall(job, response_format, stream_format), issues


@dataclass(frozen=True)
class TranscriptionCall:
    job: dict
    response_format: str
    words: bool
    segments: bool


def transcription_call(fields: Mapping[str, list[Any]], audio: bytes | None
                       ) -> tuple[TranscriptionCall, Issues]:
    """The job input of a transcription request (``fields``: each form field's values) and the
    OpenAI-level issues found (not raised yet, like ``speech_call``)."""
    issues = Issues()
    _unknown([k for k in fields if k != "timestamp_granularities"], TRANSCRIBE_FIELDS, issues)

    def one(name: str) -> Any:
        values = fields.get(name) or []
        if len(values) > 1:
            issues.add(name, "was sent more than once")
        return values[0] if values else None

    if audio is None:
        issues.add("file", "is required: the audio file to transcribe (multipart form field 'file')")
    elif not audio:
        issues.add("file", "is empty")
    _model(one("model"), ASR_MODEL, issues)
    fmt = _choice(one("response_format"), "response_format", TRANSCRIPT_FORMATS, "json", issues) or "json"
    temperature = one("temperature")
    if temperature is not None:
        try:
            float(temperature)
        except (TypeError, ValueError):
            issues.add("temperature", f"must be a number (got {str(temperature)[:40]!r})")
    granularities = [*fields.get("timestamp_granularities[]", []), *fields.get("timestamp_granularities", [])]
    for value in granularities:
        if value not in GRANULARITIES:
            issues.add("timestamp_granularities[]", f"must be word or segment (got {str(value)[:40]!r})")
    if granularities and fmt != "verbose_json":
        issues.add("timestamp_granularities[]", "needs response_format verbose_json")
    words = fmt in ("srt", "vtt") or "word" in granularities
    job: dict = {"task": "transcribe", "timestamps": words}
    if audio:
        job["audio"] = base64.b64encode(audio).decode("ascii")
    language = one("language")
    if language is not None:
        job["language"] = language
    if fmt in ("srt", "vtt"):
        job["subtitles"] = fmt
    return TranscriptionCall(job, fmt, words, not granularities or "segment" in granularities), issues


def transcription_body(call: TranscriptionCall, out: Mapping[str, Any]) -> tuple[Any, str]:
    """(body, media type) of the transcription answer in the format asked for."""
    if call.response_format == "text":
        return out["text"] + "\n", "text/plain; charset=utf-8"
    if call.response_format in ("srt", "vtt"):
        return out["subtitles"], "text/plain; charset=utf-8"
    if call.response_format == "json":
        return {"text": out["text"]}, "application/json"
    body: dict = {"task": "transcribe", "language": out["language"], "duration": out["duration"],
                  "text": out["text"]}
    if call.segments:
        # OpenAI's segment shape; WhisperX's aligned segments carry no token ids or decoder statistics.
        body["segments"] = [{"id": i, "seek": 0, "start": s["start"], "end": s["end"], "text": s["text"],
                             "tokens": [], "temperature": 0.0, "avg_logprob": 0.0, "compression_ratio": 0.0,
                             "no_speech_prob": 0.0} for i, s in enumerate(out["segments"])]
    if call.words:
        body["words"] = out.get("words", [])
    return body, "application/json"


def models() -> dict:
    return {"object": "list", "data": [
        {"id": TTS_MODEL, "object": "model", "created": 0, "owned_by": "f5-tts",
         "aliases": list(TTS_MODELS[1:])},
        {"id": ASR_MODEL, "object": "model", "created": 0, "owned_by": "whisperx",
         "aliases": list(ASR_MODELS[1:])},
    ]}
