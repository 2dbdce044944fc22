"""F5-TTS's text side: a request's text as batches, and their audio joined again.

``chunk_text`` splits at sentence and clause punctuation as upstream does (same batches, so the same
audio); ``split_oversized`` / ``take_prefix`` cut a clause longer than the budget by words, then by
characters; ``plan_batches`` makes one request's batches (each with its own seed); ``batch_duration`` is
upstream's length rule; ``cross_fade_concat`` and the streaming ``CrossFader`` join the batches' audio.
``Prepared`` is a request checked and planned, ready for the sampler (worker/engine/tts.py).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# Upstream's per-call budget: reference + generated audio of one batch stays under ~22 s.
BATCH_SECONDS = 22.0
_SENTENCE_END = re.compile(r"(?<=[;:,.!?])\s+|(?<=[；：，。！？])")


def utf8_len(s: str) -> int:
    return len(s.encode("utf-8"))


def chunk_text(text: str, max_chars: int) -> list[str]:
    """Split at sentence/clause punctuation into batches of at most max_chars UTF-8 bytes (a single longer
    clause stays whole). Same batches as upstream's utils_infer.chunk_text (tested), so audio matches."""
    batches: list[str] = []
    current = ""
    for piece in _SENTENCE_END.split(text):
        if not piece:
            continue
        # Latin-script pieces are rejoined with a space; CJK pieces (multi-byte last char) are not.
        joined = piece + " " if utf8_len(piece[-1]) == 1 else piece
        if utf8_len(current) + utf8_len(piece) <= max_chars:
            current += joined
            continue
        if current:
            batches.append(current.strip())
        current = joined
    if current:
        batches.append(current.strip())
    return batches


def split_oversized(text: str, max_bytes: int) -> list[str]:
    """``text`` as pieces of at most ``max_bytes`` UTF-8 bytes: as many whole words as fit, a word
    longer than that split by characters (one character always makes a piece, however long)."""
    pieces: list[str] = []
    rest = text.strip()
    while utf8_len(rest) > max_bytes:
        head, rest = take_prefix(rest, max_bytes)
        pieces.append(head)
    if rest:
        pieces.append(rest)
    return pieces


def take_prefix(text: str, max_bytes: int) -> tuple[str, str]:
    """(the longest run of whole words of ``text`` within ``max_bytes``, the rest); when the first word
    alone is longer, as many of its characters as fit (at least one). Whitespace inside is kept."""
    end = size = 0
    for word in re.finditer(r"\S+", text):
        size += utf8_len(text[end:word.end()])
        if size > max_bytes:
            break
        end = word.end()
    if end == 0:
        size = 0
        for char in text:
            size += utf8_len(char)
            if size > max_bytes and end > 0:
                break
            end += 1
    return text[:end].strip(), text[end:].strip()


def cross_fade_concat(waves: Sequence[np.ndarray], fade: int) -> np.ndarray:
    """Reference (non-streamed) joining of batch waves with linear cross-fades, as upstream joins them."""
    out = np.asarray(waves[0], dtype=np.float64)
    for wave in waves[1:]:
        n = min(fade, len(out), len(wave))
        if n <= 0:
            out = np.concatenate([out, wave])
            continue
        blended = out[-n:] * np.linspace(1, 0, n) + wave[:n] * np.linspace(0, 1, n)
        out = np.concatenate([out[:-n], blended, wave[n:]])
    return out.astype(np.float32)


class CrossFader:
    """Streams the cross-faded join: each batch is emitted at once except its last `fade` samples,
    which are held back and blended into the next batch. Concatenated output == cross_fade_concat."""

    def __init__(self, fade: int) -> None:
        self.fade = max(0, fade)
        self.held = np.zeros(0, dtype=np.float64)
        self.total = 0  # length of the joined audio so far, held tail included

    def push(self, wave: np.ndarray, last: bool) -> np.ndarray:
        wave = np.asarray(wave, dtype=np.float64)
        if self.total == 0:
            combined = wave
        else:
            n = min(self.fade, self.total, len(wave))
            if n <= 0:
                combined = np.concatenate([self.held, wave])
            else:
                blended = self.held[-n:] * np.linspace(1, 0, n) + wave[:n] * np.linspace(0, 1, n)
                combined = np.concatenate([self.held[:-n], blended, wave[n:]])
            self.total -= n
        self.total += len(wave)
        keep = 0 if last else min(self.fade, len(combined))
        self.held = combined[len(combined) - keep:]
        return combined[: len(combined) - keep].astype(np.float32)


@dataclass(frozen=True)
class Batch:
    gen_text: str
    seed: int


def batch_duration(ref_frames: int, ref_text: str, gen_text: str, speed: float) -> int:
    """Upstream's length rule: the reference's frames per byte of its transcript, times the batch's
    bytes, over the speed (very short texts are slowed down); the result includes the reference."""
    gen_len = utf8_len(gen_text)
    local_speed = speed if gen_len >= 10 else 0.3
    return ref_frames + int(ref_frames / utf8_len(ref_text) * gen_len / local_speed)


@dataclass(frozen=True)
class Prepared:
    batches: list[Batch]
    ref: np.ndarray
    ref_text: str  # normalized; the joiner space is added at synthesis
    ref_frames: int

    @property
    def joiner_ref(self) -> str:
        # Upstream appends a space after a Latin-script reference so the two texts do not fuse.
        return self.ref_text + " " if utf8_len(self.ref_text[-1]) == 1 else self.ref_text



def plan_batches(text: str, ref_text: str, ref_seconds: float, speed: float, seed: int,
                 first_chunk_chars: int = 0) -> list[Batch]:
    """The text batches of one request, upstream's way (``chunk_text`` under a byte budget that keeps
    reference + batch near ``BATCH_SECONDS``), the first one at most ``first_chunk_chars`` bytes when
    that is set (an earlier stream start); a clause longer than the budget split by words, then
    characters."""
    max_chars = int(utf8_len(ref_text) / ref_seconds * max(BATCH_SECONDS - ref_seconds, 2.0) * speed)
    max_chars = max(max_chars, 1)
    first = first_chunk_chars
    if first and first < max_chars:
        small = chunk_text(text, first)
        # The first small batch stays (cut to size when its clause is longer); the rest is
        # regrouped under the normal budget.
        head, rest = take_prefix(small[0], first) if small else ("", "")
        texts = [head, *chunk_text(" ".join(t for t in (rest, *small[1:]) if t), max_chars)]
    else:
        texts = chunk_text(text, max_chars)
    # A clause longer than the budget (no punctuation to split at) is split by words, then
    # characters: one batch of it could pass the model's frame limit.
    texts = [piece for t in texts if t for piece in split_oversized(t, max_chars)]
    return [Batch(t, seed + i) for i, t in enumerate(texts)]


def clip(text: str, keep: int = 40) -> str:
    return text if len(text) <= keep else text[:keep] + "..."


def normalize_ref_text(ref_text: str) -> str:
    """Upstream ends the reference transcript with sentence punctuation plus a space."""
    ref_text = ref_text.strip()
    if ref_text.endswith("。"):
        return ref_text
    if ref_text.endswith("."):
        return ref_text + " "
    return ref_text + ". "
