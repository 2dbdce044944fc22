"""Preset voices on the volume: ``<voices_dir>/<name>.wav`` plus an optional ``<name>.txt`` transcript.

A job names a preset with ``"voice": "<name>"`` instead of sending ``ref_audio``; ``{"task": "voices"}``
lists them. Names are plain tokens checked against ``VOICE_NAME`` and the resolved file must sit
directly in the voices directory, so no job can read any other file. A preset without a ``.txt`` is
transcribed on first use (and cached like any reference). The file is named ``.wav`` but may hold any
format soundfile decodes (FLAC, OGG, MP3); decoding and its limits are ``worker.jobs.audio``'s.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import soundfile

from worker.errors import VoiceError

log = logging.getLogger(__name__)

VOICE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
AUDIO_SUFFIX = ".wav"
TEXT_SUFFIX = ".txt"
MAX_TEXT_BYTES = 64 * 1024


@dataclass(frozen=True)
class Voice:
    name: str
    audio_path: Path
    ref_text: str | None


class VoiceLibrary:
    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def _path(self, name: str, suffix: str) -> Path:
        if not VOICE_NAME.fullmatch(name):
            raise VoiceError("input.voice", f"{name!r} is not a preset name (letters, digits, '_', '-')")
        path = self.directory / f"{name}{suffix}"
        # The pattern already forbids separators and dots; resolving guards against a symlinked
        # preset pointing elsewhere on the volume or the host.
        root = self.directory.resolve()
        if path.exists() and path.resolve().parent != root:
            raise VoiceError("input.voice", f"preset {name!r} points outside the voices directory")
        return path

    def names(self) -> list[str]:
        if not self.directory.is_dir():
            return []
        found = []
        for path in self.directory.iterdir():
            name = path.name[: -len(AUDIO_SUFFIX)] if path.name.endswith(AUDIO_SUFFIX) else None
            if name and VOICE_NAME.fullmatch(name) and path.is_file():
                found.append(name)
        return sorted(found)

    def get(self, name: str) -> Voice:
        audio = self._path(name, AUDIO_SUFFIX)
        if not audio.is_file():
            known = self.names()
            listing = ", ".join(known) if known else f"none: add <name>.wav files to {self.directory}"
            raise VoiceError("input.voice", f"no preset named {name!r} (available: {listing})")
        return Voice(name=name, audio_path=audio, ref_text=self._text(name))

    def _text(self, name: str) -> str | None:
        path = self._path(name, TEXT_SUFFIX)
        if not path.is_file():
            return None
        data = path.read_bytes()[:MAX_TEXT_BYTES]
        text = data.decode("utf-8", errors="replace").strip()
        return text or None

    def describe(self) -> list[dict]:
        """What ``{"task": "voices"}`` returns: name, transcript, duration and rate of each preset."""
        entries = []
        for name in self.names():
            voice = self.get(name)
            entry: dict = {"name": name, "ref_text": voice.ref_text}
            try:
                info = soundfile.info(str(voice.audio_path))
                entry["duration"] = round(info.frames / info.samplerate, 3) if info.samplerate else None
                entry["sample_rate"] = info.samplerate
            except (soundfile.LibsndfileError, RuntimeError) as err:
                log.warning("voices: preset %s is not readable audio: %s", voice.audio_path, err)
                entry["error"] = "not readable audio"
            entries.append(entry)
        return entries
