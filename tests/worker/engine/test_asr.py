"""worker.engine.asr on the tiny real WhisperX models: the whole-clip VAD, alignment models loaded once
per language, an unconfigured language refused by name, and loaders that keep stdout clean."""

from __future__ import annotations

import numpy as np
import pytest
from jobkit import TINY_CACHE, voice_like

from worker.engine.asr import SAMPLE_RATE, WINDOW_S, quiet_stdout, whole_clip_vad
from worker.errors import EngineError


@pytest.fixture(scope="module")
def asr():
    from devtools.tiny import tiny_config
    from worker.engine.core import Engine

    return Engine.load(tiny_config(TINY_CACHE)).asr


def test_the_whole_clip_vad_cuts_thirty_second_windows() -> None:
    vad = whole_clip_vad()
    seconds = 2 * WINDOW_S + 5
    segments = vad({"waveform": np.zeros(int(seconds * SAMPLE_RATE), np.float32), "sample_rate": SAMPLE_RATE})
    assert [(s.start, s.end) for s in segments] == [(0.0, 30.0), (30.0, 60.0), (60.0, 65.0)]
    assert vad.merge_chunks([], 30) == []  # nothing found: nothing to merge


def test_loaders_print_to_the_log_not_to_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    with quiet_stdout("loader"):
        print("Lightning automatically upgraded your loaded checkpoint")
    assert capsys.readouterr().out == ""


def test_an_alignment_model_loads_once_per_language(asr) -> None:
    assert asr.languages == ("en",)
    assert asr.align_model("en") is asr.align_model("en")


def test_an_unconfigured_language_is_refused_by_name(asr) -> None:
    with pytest.raises(EngineError) as caught:
        asr.align_model("de")
    assert caught.value.where == "language" and "ALIGN_MODELS" in caught.value.why


def test_transcribe_and_align_return_whisperx_segments(asr) -> None:
    audio = voice_like(2.0, SAMPLE_RATE)
    result = asr.transcribe(audio, "en")
    assert result["language"] == "en" and isinstance(result["segments"], list)
    aligned = asr.align([{"text": "hello there", "start": 0.0, "end": 2.0}], audio, "en")
    words = [w for s in aligned["segments"] for w in s.get("words", [])]
    assert [w["word"] for w in words] == ["hello", "there"]
