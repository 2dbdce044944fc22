"""The worker's own audio I/O: job audio in (base64 or http(s) URL), decode, mono, resample, encode out.

Decoding and encoding go through soundfile (libsndfile 1.2 bundled in its wheels: WAV, FLAC, OGG
Vorbis/Opus and MP3 both ways), so no ffmpeg process runs per job. Local paths and ``file://`` URLs are
refused: a job's audio is data it sends or a public URL; files on the volume are reachable only as
presets (``worker.voices``).

Resampling is polyphase filtering (``scipy.signal.resample_poly``) with the exact rational ratio
(e.g. 44100 -> 24000 is up 80, down 147) and a Kaiser-windowed sinc low-pass (beta 8.0: stopband about
-80 dB, cut at the lower Nyquist), the standard band-limited method; it has no FFT wrap-around at the
edges and costs O(n * taps / down).
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from math import gcd

import numpy as np
import soundfile
from scipy.signal import resample_poly

from worker.urlfetch import FetchError, FetchPolicy, fetch, is_url

_ENCODINGS = {  # job format -> (libsndfile container, subtype)
    "wav": ("WAV", "PCM_16"),
    "flac": ("FLAC", "PCM_16"),
    "ogg": ("OGG", "VORBIS"),
    "mp3": ("MP3", "MPEG_LAYER_III"),
}
MIME = {"wav": "audio/wav", "flac": "audio/flac", "ogg": "audio/ogg", "mp3": "audio/mpeg"}
_DATA_URI = re.compile(r"data:[\w/+.-]*(;[\w=.-]+)*;base64,", re.IGNORECASE)
_KAISER_BETA = 8.0
# libsndfile's Vorbis and MP3 encoders are fed in blocks: one giant write has crashed some versions.
_WRITE_BLOCK = 1 << 16


class AudioError(ValueError):
    """Job audio is missing, too large, too long or not audio; the message names the field."""


@dataclass(frozen=True)
class Clip:
    samples: np.ndarray  # float32, mono, in [-1, 1]
    sample_rate: int

    @property
    def duration(self) -> float:
        return len(self.samples) / self.sample_rate


def read_source(value: str, policy: FetchPolicy, field: str) -> bytes:
    """The bytes of job audio given as base64 (optionally a data: URI) or an http(s) URL."""
    text = value.strip()
    if is_url(text):
        try:
            return fetch(text, policy, field)
        except FetchError as err:
            raise AudioError(str(err)) from err
    lowered = text[:16].lower()
    if lowered.startswith(("file:", "/", "./", "../", "~")) or re.match(r"[a-z][a-z0-9+.-]*://", lowered):
        raise AudioError(f"{field}: local paths and non-http(s) URLs are not accepted; send base64 audio "
                         "or an http(s) URL (files on the volume: use a preset with input.voice)")
    match = _DATA_URI.match(text)
    if match:
        text = text[match.end():]
    if len(text) * 3 // 4 > policy.max_bytes + 3:
        raise AudioError(f"{field}: the audio is about {len(text) * 3 // 4} bytes; the limit is "
                         f"{policy.max_bytes}")
    try:
        data = base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError) as err:
        raise AudioError(f"{field}: neither an http(s) URL nor valid base64 ({err})") from err
    if not data:
        raise AudioError(f"{field}: the base64 data is empty")
    return data


def decode(data: bytes, field: str, max_seconds: float) -> Clip:
    """Decode WAV/FLAC/OGG/MP3 bytes to mono float32, refusing audio longer than ``max_seconds``."""
    try:
        with soundfile.SoundFile(io.BytesIO(data)) as sound:
            rate = sound.samplerate
            frames = sound.frames
            if rate <= 0:
                raise AudioError(f"{field}: the audio has no sample rate")
            # MP3 frame counts are estimates; the check after decoding is the exact one.
            if frames > 0 and frames / rate > max_seconds * 1.05:
                raise AudioError(f"{field}: the audio is {frames / rate:.1f} s long; the limit is "
                                 f"{max_seconds:g} s")
            samples = sound.read(dtype="float32", always_2d=True)
    except AudioError:
        raise
    except (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError) as err:
        raise AudioError(f"{field}: not readable audio (wav, flac, ogg or mp3 expected): {err}") from err
    mono = samples.mean(axis=1, dtype=np.float32) if samples.shape[1] > 1 else samples[:, 0]
    if mono.size == 0:
        raise AudioError(f"{field}: the audio has no samples")
    if not np.all(np.isfinite(mono)):
        raise AudioError(f"{field}: the audio holds NaN or infinite samples")
    if mono.size / rate > max_seconds:
        raise AudioError(f"{field}: the audio is {mono.size / rate:.1f} s long; the limit is "
                         f"{max_seconds:g} s")
    return Clip(np.ascontiguousarray(np.clip(mono, -1.0, 1.0), dtype=np.float32), int(rate))


def resample(samples: np.ndarray, source_rate: int, target_rate: int) -> np.ndarray:
    """Band-limited polyphase resampling by the exact ratio ``target_rate / source_rate``."""
    if source_rate == target_rate or samples.size == 0:
        return np.asarray(samples, dtype=np.float32)
    up, down = _ratio(source_rate, target_rate)
    out = resample_poly(np.asarray(samples, dtype=np.float64), up, down, window=("kaiser", _KAISER_BETA))
    return out.astype(np.float32)


def _ratio(source_rate: int, target_rate: int) -> tuple[int, int]:
    common = gcd(int(source_rate), int(target_rate))
    return int(target_rate) // common, int(source_rate) // common


class StreamResampler:
    """``resample`` for audio that arrives in pieces: the pieces' outputs, concatenated, equal the
    resampled whole (up to float rounding), with no clicks at the joins.

    Output sample n depends on the input within ``half_len / up`` samples of ``n * down / up``
    (``resample_poly``'s filter has ``2 * 10 * max(up, down) + 1`` taps). Each push emits the output
    whose inputs have all arrived and keeps only the short tail still needed, starting on a multiple
    of ``down`` so the tail's own output lines up with the whole's sample grid.
    """

    def __init__(self, source_rate: int, target_rate: int) -> None:
        self.up, self.down = _ratio(source_rate, target_rate)
        self.half_len = 10 * max(self.up, self.down)
        self._pending = np.zeros(0, np.float32)
        self._base = 0  # absolute input index of _pending[0]; a multiple of down
        self._next = 0  # next absolute output index to emit
        self._seen = 0  # input samples pushed so far

    def push(self, samples: np.ndarray, last: bool = False) -> np.ndarray:
        self._pending = np.concatenate([self._pending, np.asarray(samples, dtype=np.float32)])
        self._seen += len(samples)
        if self.up == self.down:
            out, self._pending = self._pending, np.zeros(0, np.float32)
            return out
        if last:
            end = -(-self._seen * self.up // self.down)  # the whole's output length
        else:
            end = ((self._seen - 1) * self.up - self.half_len) // self.down + 1
        if end <= self._next or self._pending.size == 0:
            return np.zeros(0, np.float32)
        out = resample(self._pending, self.down, self.up)
        offset = self._base * self.up // self.down
        ready = out[self._next - offset:end - offset]
        self._next = end
        # Keep the input the next outputs still reach back to, from a multiple of down.
        first_needed = max(0, (self._next * self.down - self.half_len) // self.up)
        base = first_needed // self.down * self.down
        self._pending = self._pending[base - self._base:]
        self._base = base
        return ready.astype(np.float32)


def to_rate(clip: Clip, rate: int) -> np.ndarray:
    return resample(clip.samples, clip.sample_rate, rate)


def encode(samples: np.ndarray, rate: int, fmt: str) -> bytes:
    """Encode mono float32 audio as a complete file of ``fmt`` (wav, flac, ogg, mp3)."""
    container, subtype = _ENCODINGS[fmt]
    pcm = np.clip(np.asarray(samples, dtype=np.float32), -1.0, 1.0)
    buffer = io.BytesIO()
    with soundfile.SoundFile(buffer, "w", samplerate=int(rate), channels=1, format=container,
                             subtype=subtype) as sound:
        for start in range(0, max(len(pcm), 1), _WRITE_BLOCK):
            sound.write(pcm[start:start + _WRITE_BLOCK])
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def encoded_pieces(samples: np.ndarray, rate: int, fmt: str, max_b64_chars: int) -> Iterator[str]:
    """Encode ``samples`` as one or more standalone files whose base64 text stays within the cap.

    Each piece is a complete file (a client can play or append each one as it arrives); a piece whose
    encoding is too large is split in two at a sample boundary and tried again.
    """
    pending = [np.asarray(samples, dtype=np.float32)]
    while pending:
        part = pending.pop(0)
        text = b64(encode(part, rate, fmt))
        if len(text) <= max_b64_chars or len(part) < 2 * rate // 100:
            yield text
            continue
        pieces = max(2, math.ceil(len(text) / max_b64_chars))
        pending[:0] = np.array_split(part, pieces)
