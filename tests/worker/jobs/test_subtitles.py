"""Subtitles from word timings: cue grouping, timestamps, SRT and WebVTT syntax."""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

from worker.jobs.subtitles import CueRules, group_cues, to_srt, to_vtt, wrap


@dataclass(frozen=True)
class W:
    word: str
    start: float
    end: float


def timed(text: str, step: float = 0.3, pause_after: dict[int, float] | None = None) -> list[W]:
    words, t = [], 0.0
    for i, token in enumerate(text.split()):
        words.append(W(token, round(t, 3), round(t + step * 0.8, 3)))
        t += step + (pause_after or {}).get(i, 0.0)
    return words


def test_sentences_end_cues() -> None:
    cues = group_cues(timed("Hello there. How are you? Fine!"))
    assert [c.text for c in cues] == ["Hello there.", "How are you?", "Fine!"]
    assert all(a.end <= b.start for a, b in itertools.pairwise(cues))


def test_long_sentences_break_by_length_duration_and_clause() -> None:
    text = ("This is a rather long sentence, which keeps going with many words and clauses, so that it "
            "cannot possibly fit on one subtitle without breaking somewhere sensible along the way.")
    rules = CueRules()
    cues = group_cues(timed(text, step=0.2), rules)
    assert len(cues) > 1
    assert all(len(c.text) <= rules.max_chars for c in cues)
    assert all(c.end - c.start <= rules.max_seconds + 1e-9 for c in cues)
    assert cues[0].text.endswith(",")  # clause mark after soft_chars
    assert " ".join(c.text for c in cues) == text


def test_pause_breaks_and_duration_cap() -> None:
    cues = group_cues(timed("one two three four", pause_after={1: 2.0}))
    assert [c.text for c in cues] == ["one two", "three four"]
    slow = group_cues(timed("a b c d e f g h", step=1.0), CueRules(max_seconds=3.0))
    assert all(c.end - c.start <= 3.0 for c in slow) and len(slow) >= 3


def test_empty_words_and_no_words() -> None:
    assert group_cues([W("  ", 0, 0.1), W("Hi.", 0.1, 0.4)])[0].text == "Hi."
    assert to_srt([]) == ""
    assert to_vtt([]) == "WEBVTT\n"


def test_wrap_balances_two_lines() -> None:
    text = "the quick brown fox jumps over the lazy dog and runs far away"
    lines = wrap(text, 42).split("\n")
    assert len(lines) == 2 and abs(len(lines[0]) - len(lines[1])) < 10
    assert wrap("short line", 42) == "short line"


def test_srt_syntax() -> None:
    srt = to_srt([W("Hello", 0.0, 0.5), W("world.", 0.6, 1.234), W("Next", 3661.5, 3662.0)])
    blocks = srt.strip().split("\n\n")
    assert blocks[0] == "1\n00:00:00,000 --> 00:00:01,234\nHello world."
    assert blocks[1] == "2\n01:01:01,500 --> 01:01:02,000\nNext"


def test_vtt_syntax_and_escaping() -> None:
    vtt = to_vtt([W("a<b", 0.0, 0.5), W("-->", 0.5, 1.0), W("&c.", 1.0, 1.5)])
    assert vtt.startswith("WEBVTT\n\n")
    body = vtt.split("\n\n")[1]
    timing, text = body.split("\n", 1)
    assert re.fullmatch(r"\d\d:\d\d:\d\d\.\d{3} --> \d\d:\d\d:\d\d\.\d{3}", timing)
    assert text.strip() == "a&lt;b --&gt; &amp;c."
