"""Job input -> typed request. Validation collects every issue, then raises one ``JobInputError``.

Each issue names the field (``input.<name>``) and says why, so ``{"error": str(err)}`` is enough for a
client to fix its request. Unknown top-level fields are rejected with the list of accepted ones: a typo
such as ``txt`` must not silently produce audio of nothing. Nothing here touches audio or the network:
``ref_audio``/``audio`` stay strings until ``worker.jobs.audio`` fetches and decodes them.

Every string field must be what the encoders downstream take: JSON parsers hand over lone surrogates
(``"\ud800"``), which no UTF-8 encoder (the text batching, the tokenizer, the JSON sent back, the log)
accepts, so they are refused here by name. Values are quoted in messages through ``reprlib`` (bounded
in length and depth, ASCII-safe), so a hostile value cannot make the error itself fail or balloon.
"""

from __future__ import annotations

import difflib
import math
import re
import reprlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from worker.engine.core import SynthesisParams
from worker.errors import JobInputError
from worker.jobs.voices import VOICE_NAME
from worker.settings import JobSettings

FORMATS = ("wav", "flac", "mp3", "ogg")
SUBTITLES = ("srt", "vtt")
TASKS = ("tts", "transcribe", "voices")
SAMPLE_RATES = (8000, 11025, 16000, 22050, 24000, 32000, 44100, 48000)
# ISO 639-1/-3 style codes ("en", "yue"); the engine says whether it supports one.
_LANGUAGE = re.compile(r"[a-z]{2,3}")
MAX_SEED = 2**32 - 1
# The synthesis defaults are the engine's (speed, nfe_step, cfg_strength, sway_sampling_coef): one place.
TTS = SynthesisParams()


@dataclass(frozen=True)
class TtsRequest:
    text: str
    ref_audio: str | None = None
    voice: str | None = None
    ref_text: str | None = None
    language: str | None = None
    speed: float = TTS.speed
    nfe_step: int = TTS.nfe_step
    cfg_strength: float = TTS.cfg_strength
    sway_sampling_coef: float = TTS.sway_sampling_coef
    seed: int | None = None
    format: str = "wav"
    sample_rate: int | None = None
    timestamps: bool = False
    subtitles: str | None = None
    stream: bool = False
    task: str = "tts"


@dataclass(frozen=True)
class TranscribeRequest:
    audio: str
    language: str | None = None
    timestamps: bool = True
    subtitles: str | None = None
    task: str = "transcribe"


@dataclass(frozen=True)
class VoicesRequest:
    task: str = "voices"


Request = TtsRequest | TranscribeRequest | VoicesRequest

_MISSING = object()


class _Reader:
    """Reads fields of one input dict, recording issues instead of raising at the first one."""

    def __init__(self, data: Mapping[str, Any]) -> None:
        self.data = data
        self.issues: list[tuple[str, str]] = []  # (field, why)

    def _bad(self, name: str, why: str, value: Any = _MISSING) -> None:
        got = "" if value is _MISSING else f" (got {_show(value)})"
        self.issues.append((f"input.{name}", f"{why}{got}"))

    def text(self, name: str, *, required: bool = False, max_chars: int | None = None,
             check: Callable[[str], str | None] | None = None) -> str | None:
        value = self.data.get(name)
        if value is None:
            if required:
                self._bad(name, "is required")
            return None
        if not isinstance(value, str):
            self._bad(name, "must be a string", value)
            return None
        if (why := not_utf8(value)) is not None:
            self._bad(name, why)
            return None
        if not value.strip():
            self._bad(name, "must not be empty" if required else "must not be empty (leave it out instead)")
            return None
        if max_chars is not None and len(value) > max_chars:
            self._bad(name, f"is {len(value)} characters; the limit is {max_chars}")
            return None
        if check is not None and (why := check(value)):
            self._bad(name, why, value)
            return None
        return value

    def number(self, name: str, default: float, low: float, high: float) -> float:
        value = self.data.get(name)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            self._bad(name, f"must be a number from {low:g} to {high:g}", value)
            return default
        if not low <= value <= high:
            self._bad(name, f"must be from {low:g} to {high:g}", value)
            return default
        return float(value)

    def integer(self, name: str, default: int | None, low: int, high: int) -> int | None:
        value = self.data.get(name)
        if value is None:
            return default
        whole = isinstance(value, int) or (isinstance(value, float) and value.is_integer())
        if isinstance(value, bool) or not whole:
            self._bad(name, f"must be a whole number from {low} to {high}", value)
            return default
        if not low <= value <= high:
            self._bad(name, f"must be from {low} to {high}", value)
            return default
        return int(value)

    def flag(self, name: str, default: bool) -> bool:
        value = self.data.get(name)
        if value is None:
            return default
        if not isinstance(value, bool):
            self._bad(name, "must be true or false", value)
            return default
        return value

    def choice(self, name: str, options: tuple, default: Any) -> Any:
        value = self.data.get(name)
        if value is None:
            return default
        if isinstance(value, str):
            value = value.strip().lower()
        if isinstance(value, bool) or value not in options:
            self._bad(name, "must be one of " + ", ".join(str(o) for o in options), value)
            return default
        return value


def not_utf8(value: str) -> str | None:
    """Why ``value`` cannot be encoded as UTF-8 (a lone surrogate), or None when it can."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        return (f"holds a lone surrogate (U+{ord(value[err.start]):04X} at character {err.start}), which is "
                "not valid Unicode; send UTF-8 text")
    return None


_SHOW = reprlib.Repr()
_SHOW.maxlevel, _SHOW.maxstring, _SHOW.maxother, _SHOW.maxlist, _SHOW.maxdict = 2, 57, 57, 4, 4


def _show(value: Any) -> str:
    text = _SHOW.repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _language(value: str) -> str | None:
    if not _LANGUAGE.fullmatch(value):
        return "must be a lower-case ISO 639 language code such as 'en' or 'zh'"
    return None


def _voice_name(value: str) -> str | None:
    if not VOICE_NAME.fullmatch(value):
        return "must be a preset name: letters, digits, '_' and '-' (64 at most), see {\"task\": \"voices\"}"
    return None


_FIELDS: dict[str, tuple[str, ...]] = {
    "tts": ("task", "text", "ref_audio", "voice", "ref_text", "language", "speed", "nfe_step",
            "cfg_strength", "sway_sampling_coef", "seed", "format", "sample_rate", "timestamps",
            "subtitles", "stream"),
    "transcribe": ("task", "audio", "language", "timestamps", "subtitles"),
    "voices": ("task",),
}


def accepted_fields(task: str) -> tuple[str, ...]:
    return _FIELDS[task]


def parse_job(job_input: Any, limits: JobSettings) -> Request:
    """Validate a job's ``input`` into a request, or raise ``JobInputError`` listing every issue."""
    if not isinstance(job_input, Mapping):
        raise JobInputError("input", f"must be a JSON object with the job's fields (got {_show(job_input)})")
    task = job_input.get("task", "tts")
    if isinstance(task, str):
        task = task.strip().lower()
    if task not in TASKS:
        raise JobInputError("input.task", f"must be one of {', '.join(TASKS)} (got {_show(task)})")
    issues = _unknown_fields(job_input, task)
    reader = _Reader(job_input)
    if task == "voices":
        request: Request = VoicesRequest()
    elif task == "transcribe":
        request = _transcribe(reader)
    else:
        request = _tts(reader, limits)
    issues += reader.issues
    if issues:
        raise JobInputError.collected(issues)
    return request


def _unknown_fields(job_input: Mapping[str, Any], task: str) -> list[tuple[str, str]]:
    accepted = _FIELDS[task]
    issues = []
    for key in job_input:
        if key in accepted:
            continue
        printable = isinstance(key, str) and key.isprintable() and len(key) <= 40
        name = key if printable else _show(key)
        hint = difflib.get_close_matches(name, accepted, n=1)
        guess = f" Did you mean '{hint[0]}'?" if hint else ""
        issues.append((f"input.{name}", f"unknown field for task '{task}'.{guess} "
                                        f"Accepted: {', '.join(accepted)}"))
    return issues


def _tts(r: _Reader, limits: JobSettings) -> TtsRequest:
    text = r.text("text", required=True, max_chars=limits.max_text_chars)
    ref_audio = r.text("ref_audio")
    voice = r.text("voice", check=_voice_name)
    if "ref_audio" in r.data and "voice" in r.data and r.data["ref_audio"] is not None \
            and r.data["voice"] is not None:
        r.issues.append(("input.ref_audio", "give either ref_audio or voice, not both"))
    elif r.data.get("ref_audio") is None and r.data.get("voice") is None:
        r.issues.append(("input.ref_audio", "is required (base64 audio or an http(s) URL), "
                                            "or name a preset with input.voice"))
    return TtsRequest(
        text=text or "",
        ref_audio=ref_audio,
        voice=voice,
        ref_text=r.text("ref_text", max_chars=limits.max_text_chars),
        language=r.text("language", check=_language),
        speed=r.number("speed", TTS.speed, 0.25, 4.0),
        nfe_step=r.integer("nfe_step", TTS.nfe_step, 1, 128) or TTS.nfe_step,
        cfg_strength=r.number("cfg_strength", TTS.cfg_strength, 0.0, 10.0),
        sway_sampling_coef=r.number("sway_sampling_coef", TTS.sway_sampling_coef, -1.0, 1.0),
        seed=r.integer("seed", None, 0, MAX_SEED),
        format=r.choice("format", FORMATS, "wav"),
        sample_rate=r.choice("sample_rate", SAMPLE_RATES, None),
        timestamps=r.flag("timestamps", False),
        subtitles=r.choice("subtitles", SUBTITLES, None),
        stream=r.flag("stream", False),
    )


def _transcribe(r: _Reader) -> TranscribeRequest:
    # Size and duration limits apply once the audio is fetched (worker.jobs.tasks).
    return TranscribeRequest(
        audio=r.text("audio", required=True) or "",
        language=r.text("language", check=_language),
        timestamps=r.flag("timestamps", True),
        subtitles=r.choice("subtitles", SUBTITLES, None),
    )
