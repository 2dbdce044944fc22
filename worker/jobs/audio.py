"""The worker's own audio I/O: job audio in (base64 or http(s) URL), decode, mono, resample, encode out.

Decoding and encoding go through soundfile (libsndfile 1.2 bundled in its wheels: WAV, FLAC, OGG
Vorbis/Opus and MP3 both ways), so no ffmpeg process runs per job. Local paths and ``file://`` URLs are
refused: a job's audio is data it sends or a public URL; files on the volume are reachable only as
presets (``worker.jobs.voices``).

Resampling is polyphase filtering (``scipy.signal.resample_poly``) with the exact rational ratio
(e.g. 44100 -> 24000 is up 80, down 147) and a Kaiser-windowed sinc low-pass (beta 8.0: stopband about
-80 dB, cut at the lower Nyquist), the standard band-limited method; it has no FFT wrap-around at the
edges and costs O(n * taps / down). The filter has ``20 * max(up, down) + 1`` taps, so an odd rate
(44101 Hz: up 24000, down 44101) would need a filter of ~900k taps, and a header claiming 4 MHz one of
80 M: a ratio whose terms pass ``MAX_RATIO_TERM`` is replaced by the nearest ratio within it (the
closest fraction, off by less than 0.02 %: an inaudible change of speed), so the filter stays small.

What decoding may cost is settled from the header before a sample is decoded: the sample rate
(``MIN_SAMPLE_RATE``..``MAX_SAMPLE_RATE``), the channels (``MAX_CHANNELS``) and the declared length
(the job's duration limit, 5 % slack for MP3's estimate) must be in range, and soundfile never reads
more frames than the header declares. Decoding then goes block by block, each block mixed down to mono
(and, with ``rate``, resampled on the fly), so memory is the mono result, not frames x channels.

Base64 is told from anything else by what it is: the base64 alphabet with its padding (MP3 frames
start with ``0xFF 0xFB``, whose base64 starts with ``//``, so a leading ``/`` proves nothing).
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from math import gcd

import numpy as np
import soundfile
from scipy.signal import resample_poly

from worker.errors import AudioError
from worker.jobs.urlfetch import FetchPolicy, fetch, is_url

_ENCODINGS = {  # job format -> (libsndfile container, subtype)
    "wav": ("WAV", "PCM_16"),
    "flac": ("FLAC", "PCM_16"),
    "ogg": ("OGG", "VORBIS"),
    "mp3": ("MP3", "MPEG_LAYER_III"),
}
MIME = {"wav": "audio/wav", "flac": "audio/flac", "ogg": "audio/ogg", "mp3": "audio/mpeg"}
_DATA_URI = re.compile(r"data:[\w/+.-]*(;[\w=.-]+)*;base64,", re.IGNORECASE)
_KAISER_BETA = 8.0
# Header values decoding accepts (a header is what an attacker writes first).
MIN_SAMPLE_RATE = 4_000
MAX_SAMPLE_RATE = 384_000
MAX_CHANNELS = 8
# The largest up/down term of a resampling ratio; 11025 -> 16000 (640/441) is the largest of the
# common rates. Filter taps: 20 * term + 1.
MAX_RATIO_TERM = 1024
# Samples decoded per block (all channels together): 1 MB of float32.
_DECODE_BLOCK_SAMPLES = 1 << 18
# Slack on the declared length: MP3 frame counts are estimates.
_DECLARED_SLACK = 1.05
# No audio file is smaller: an MP3 frame header and side info, an OGG page header, FLAC's STREAMINFO.
_MIN_AUDIO_BYTES = 24
_NOT_A_PATH = ("local paths and non-http(s) URLs are not accepted; send base64 audio or an http(s) URL "
               "(files on the volume: use a preset with input.voice)")
# libsndfile's Vorbis and MP3 encoders are fed in blocks: one giant write has crashed some versions.
_WRITE_BLOCK = 1 << 16


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
        return fetch(text, policy, field)
    match = _DATA_URI.match(text)
    if match:
        text = text[match.end():]
    if len(text) * 3 // 4 > policy.max_bytes + 3:
        raise AudioError(field, f"the audio is about {len(text) * 3 // 4} bytes; the limit is "
                         f"{policy.max_bytes}")
    try:
        # validate=True: only the base64 alphabet and correct padding (whitespace removed first,
        # as line-wrapped base64 has it). A path or another URL scheme fails here on its '.', ':',
        # '~' or length, whatever its first character.
        data = base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError) as err:
        if not match and _looks_like_a_location(text):
            raise AudioError(field, f"{_NOT_A_PATH}") from err
        raise AudioError(field, f"neither an http(s) URL nor valid base64 ({err})") from err
    if not data:
        raise AudioError(field, "the base64 data is empty")
    if len(data) < _MIN_AUDIO_BYTES and not match and _looks_like_a_location(text):
        # "/tmp/abcd" happens to be valid base64, of 6 bytes no audio file can fit in: a path was meant.
        raise AudioError(field, f"{_NOT_A_PATH}")
    return data


def _looks_like_a_location(text: str) -> bool:
    """Only for the message of a value that is not base64: was a path or another URL meant?"""
    head = text[:16].lower()
    return head.startswith(("file:", "/", "./", "../", "~")) or bool(re.match(r"[a-z][a-z0-9+.-]*:", head))


def decode(data: bytes, field: str, max_seconds: float, rate: int | None = None) -> Clip:
    """Decode WAV/FLAC/OGG/MP3 bytes to mono float32, refusing audio longer than ``max_seconds``.

    With ``rate``, the clip comes back at that rate, resampled block by block as it is decoded (a long
    recording at a high rate never sits in memory at its own rate). Header values are checked first.
    """
    try:
        with soundfile.SoundFile(io.BytesIO(data)) as sound:
            source_rate = _check_header(sound, field, max_seconds)
            mono = _read_mono(sound, source_rate, rate, field)
    except AudioError:
        raise
    except (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError) as err:
        raise AudioError(field, f"not readable audio (wav, flac, ogg or mp3 expected): {err}") from err
    out_rate = rate or source_rate
    if mono.size == 0:
        raise AudioError(field, "the audio has no samples")
    if mono.size / out_rate > max_seconds:
        raise AudioError(field, f"the audio is {mono.size / out_rate:.1f} s long; the limit is "
                         f"{max_seconds:g} s")
    return Clip(np.ascontiguousarray(np.clip(mono, -1.0, 1.0), dtype=np.float32), int(out_rate))


def _check_header(sound: soundfile.SoundFile, field: str, max_seconds: float) -> int:
    """What decoding will cost, from the header, before any of it: refuse what is out of range."""
    rate, channels, frames = int(sound.samplerate), int(sound.channels), int(sound.frames)
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise AudioError(field, f"the header says {rate} Hz; accepted sample rates are "
                         f"{MIN_SAMPLE_RATE} to {MAX_SAMPLE_RATE} Hz")
    if not 1 <= channels <= MAX_CHANNELS:
        raise AudioError(field, f"the header says {channels} channels; at most {MAX_CHANNELS} are "
                         "accepted (mix it down to mono or stereo)")
    if frames / rate > max_seconds * _DECLARED_SLACK:
        raise AudioError(field, f"the audio is {frames / rate:.1f} s long; the limit is "
                         f"{max_seconds:g} s")
    return rate


def _read_mono(sound: soundfile.SoundFile, source_rate: int, rate: int | None, field: str) -> np.ndarray:
    block = max(1, _DECODE_BLOCK_SAMPLES // sound.channels)
    resampler = StreamResampler(source_rate, rate) if rate and rate != source_rate else None
    pieces: list[np.ndarray] = []
    while True:
        samples = sound.read(block, dtype="float32", always_2d=True)
        if not len(samples):
            break
        mono = samples.mean(axis=1, dtype=np.float32) if samples.shape[1] > 1 else samples[:, 0].copy()
        if not np.all(np.isfinite(mono)):
            raise AudioError(field, "the audio holds NaN or infinite samples")
        pieces.append(resampler.push(mono) if resampler is not None else mono)
    if resampler is not None:
        pieces.append(resampler.push(np.zeros(0, np.float32), last=True))
    return np.concatenate(pieces) if pieces else np.zeros(0, np.float32)


def resample(samples: np.ndarray, source_rate: int, target_rate: int) -> np.ndarray:
    """Band-limited polyphase resampling by the exact ratio ``target_rate / source_rate``."""
    if source_rate == target_rate or samples.size == 0:
        return np.asarray(samples, dtype=np.float32)
    up, down = _ratio(source_rate, target_rate)
    out = resample_poly(np.asarray(samples, dtype=np.float64), up, down, window=("kaiser", _KAISER_BETA))
    return out.astype(np.float32)


def _ratio(source_rate: int, target_rate: int) -> tuple[int, int]:
    """(up, down) for ``target/source``: exact when its terms are small, else the closest fraction
    whose terms stay within MAX_RATIO_TERM (the filter's size grows with them)."""
    common = gcd(int(source_rate), int(target_rate))
    up, down = int(target_rate) // common, int(source_rate) // common
    if max(up, down) <= MAX_RATIO_TERM:
        return up, down
    # limit_denominator bounds down; scale its bound so that up (~ down * ratio) stays in range too.
    wanted = Fraction(int(target_rate), int(source_rate))
    near = wanted.limit_denominator(max(1, int(MAX_RATIO_TERM / max(1.0, float(wanted)))))
    return max(1, near.numerator), near.denominator


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
