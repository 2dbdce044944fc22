"""Preset voices: listing, loading, name validation, no path escapes."""

from __future__ import annotations

import os

import pytest
from jobkit import audio_bytes, voice_like

from worker.jobs.voices import VoiceError, VoiceLibrary


@pytest.fixture
def library(tmp_path):
    voices = tmp_path / "voices"
    voices.mkdir()
    (voices / "alice.wav").write_bytes(audio_bytes(voice_like(1.5, 24000), 24000))
    (voices / "alice.txt").write_text("  Hello, I am Alice.\n", encoding="utf-8")
    (voices / "bob-2.wav").write_bytes(audio_bytes(voice_like(0.5, 16000), 16000))
    (voices / "notes.md").write_text("not a voice")
    (voices / ".hidden.wav").write_bytes(b"RIFF")
    (voices / "broken.wav").write_bytes(b"not audio")
    return VoiceLibrary(voices)


def test_listing(library: VoiceLibrary) -> None:
    assert library.names() == ["alice", "bob-2", "broken"]
    listed = {v["name"]: v for v in library.describe()}
    assert listed["alice"] == {"name": "alice", "ref_text": "Hello, I am Alice.", "duration": 1.5,
                               "sample_rate": 24000}
    assert listed["bob-2"]["ref_text"] is None and listed["bob-2"]["duration"] == 0.5
    assert listed["broken"]["error"] == "not readable audio"


def test_get(library: VoiceLibrary) -> None:
    voice = library.get("alice")
    assert voice.ref_text == "Hello, I am Alice." and voice.audio_path.name == "alice.wav"
    assert library.get("bob-2").ref_text is None


@pytest.mark.parametrize("name", ["../alice", "alice/../../etc", "/etc/passwd", ".hidden", "a" * 65, "",
                                  "al ice", "alice.wav"])
def test_bad_names_are_refused(library: VoiceLibrary, name: str) -> None:
    with pytest.raises(VoiceError, match=r"^input\.voice: "):
        library.get(name)


def test_unknown_lists_available(library: VoiceLibrary, tmp_path) -> None:
    with pytest.raises(VoiceError, match=r"no preset named 'carol' \(available: alice, bob-2, broken\)"):
        library.get("carol")
    empty = VoiceLibrary(tmp_path / "nowhere")
    assert empty.names() == [] and empty.describe() == []
    with pytest.raises(VoiceError, match=r"add <name>\.wav files to"):
        empty.get("alice")


def test_symlink_out_of_the_directory_is_refused(library: VoiceLibrary, tmp_path) -> None:
    secret = tmp_path / "secret.wav"
    secret.write_bytes(audio_bytes(voice_like(0.2, 16000), 16000))
    os.symlink(secret, library.directory / "sneaky.wav")
    with pytest.raises(VoiceError, match="points outside the voices directory"):
        library.get("sneaky")
