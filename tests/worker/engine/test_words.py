"""WhisperX's word dicts become the engine's typed words in one place: untimed words are kept (with the
time of the word before them), times are numbers, clamped into the audio and monotonic."""

from __future__ import annotations

import json
import math

from worker.engine.core import Word, _words
from worker.jobs import subtitles
from worker.jobs.tasks import words_json


def test_untimed_words_are_kept_with_the_previous_words_end() -> None:
    raw = [{"word": "In", "start": 0.1, "end": 0.3, "score": 0.9},
           {"word": "2026,"},  # WhisperX cannot align digits: no start, no end
           {"word": "we", "start": 0.5, "end": float("nan")},
           {"word": "went.", "start": 0.4, "end": 9.0}]
    words = _words(raw, limit=2.0)
    assert [w.word for w in words] == ["In", "2026,", "we", "went."]
    assert words[1] == Word("2026,", 0.3, 0.3, None)
    assert words[2].start == 0.5 and words[2].end == 0.5  # a NaN end is no time: the start stands in
    assert words[3].start == 0.5 and words[3].end == 2.0  # never before the previous start; clamped
    starts = [w.start for w in words]
    assert starts == sorted(starts) and all(math.isfinite(t) for w in words for t in (w.start, w.end))


def test_the_job_layer_serializes_and_subtitles_the_same_typed_words() -> None:
    words = _words([{"word": "Hello", "start": 0.0, "end": 0.4}, {"word": "2026."}], limit=1.0)
    assert json.loads(json.dumps(words_json(words))) == [{"word": "Hello", "start": 0.0, "end": 0.4},
                                                         {"word": "2026.", "start": 0.4, "end": 0.4}]
    assert "Hello 2026." in subtitles.render(words, "srt")  # the untimed word is in the subtitles too
