"""SRT and WebVTT subtitles from word timings.

Words are grouped into cues the way subtitle guidelines suggest: a cue ends at the end of a sentence,
when it would pass ``max_chars`` characters (two lines of ``line_chars``) or ``max_seconds`` on screen,
or at a pause longer than ``max_gap``; past ``soft_chars`` characters a clause mark (comma, semicolon,
colon, dash) also ends it, so cues break at natural places rather than mid-phrase. A long cue is
wrapped onto two lines of about equal length at a space.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

_SENTENCE_END = (".", "!", "?", "…", "。", "！", "？")
_CLAUSE_END = (",", ";", ":", "—", "–", "，", "；", "：", "、")
_CLOSERS = "\"')]}»”’"


class TimedWord(Protocol):
    word: str
    start: float
    end: float


@dataclass(frozen=True)
class CueRules:
    max_chars: int = 84
    line_chars: int = 42
    soft_chars: int = 30
    max_seconds: float = 6.0
    max_gap: float = 1.0


@dataclass(frozen=True)
class Cue:
    start: float
    end: float
    text: str


def _ends_with(word: str, marks: tuple[str, ...]) -> bool:
    return word.rstrip(_CLOSERS).endswith(marks)


def group_cues(words: Sequence[TimedWord], rules: CueRules = CueRules()) -> list[Cue]:
    """Group timed words into cues; words with no text are skipped, times are kept monotonic."""
    cues: list[Cue] = []
    current: list[TimedWord] = []

    def flush() -> None:
        if current:
            text = " ".join(w.word.strip() for w in current)
            start = max(current[0].start, cues[-1].end if cues else 0.0)
            cues.append(Cue(start, max(current[-1].end, start), text))
            current.clear()

    for word in words:
        token = word.word.strip()
        if not token:
            continue
        if current:
            length = len(" ".join(w.word.strip() for w in current)) + 1 + len(token)
            too_long = length > rules.max_chars or word.end - current[0].start > rules.max_seconds
            if too_long or word.start - current[-1].end > rules.max_gap:
                flush()
        current.append(word)
        length = len(" ".join(w.word.strip() for w in current))
        clause = length >= rules.soft_chars and _ends_with(token, _CLAUSE_END)
        if clause or _ends_with(token, _SENTENCE_END):
            flush()
    flush()
    return cues


def wrap(text: str, line_chars: int) -> str:
    """Split a cue onto two lines of about equal length when it is longer than one line."""
    if len(text) <= line_chars or " " not in text:
        return text
    middle = len(text) / 2
    spaces = [i for i, c in enumerate(text) if c == " "]
    cut = min(spaces, key=lambda i: abs(i - middle))
    return text[:cut] + "\n" + text[cut + 1:]


def _stamp(seconds: float, separator: str) -> str:
    millis = max(0, round(seconds * 1000))
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


def to_srt(words: Sequence[TimedWord], rules: CueRules = CueRules()) -> str:
    blocks = []
    for index, cue in enumerate(group_cues(words, rules), start=1):
        blocks.append(f"{index}\n{_stamp(cue.start, ',')} --> {_stamp(cue.end, ',')}\n"
                      f"{wrap(cue.text, rules.line_chars)}\n")
    return "\n".join(blocks)


def to_vtt(words: Sequence[TimedWord], rules: CueRules = CueRules()) -> str:
    blocks = ["WEBVTT\n"]
    for cue in group_cues(words, rules):
        # Cue text is markup in WebVTT: escaping also keeps a spoken "-->" from reading as timing.
        text = wrap(cue.text, rules.line_chars)
        text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        blocks.append(f"{_stamp(cue.start, '.')} --> {_stamp(cue.end, '.')}\n{text}\n")
    return "\n".join(blocks)


def render(words: Sequence[TimedWord], kind: str) -> str:
    return to_srt(words) if kind == "srt" else to_vtt(words)
