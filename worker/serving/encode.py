"""Audio as a byte stream in OpenAI's ``response_format``s: mp3, opus, aac, flac, wav, pcm.

``StreamEncoder.push(samples)`` returns the bytes ready so far and ``finish()`` the rest: concatenated,
they are one file (a stream a player can start on at once). mp3 (LAME), opus (in Ogg), aac (ADTS) and
flac go through PyAV (FFmpeg's encoders, bundled in its wheel, part of the production lock), which
encodes frame by frame into a non-seekable sink. wav and pcm are written here: pcm is raw 16-bit
little-endian mono at 24 kHz (OpenAI's pcm); a streamed WAV cannot know its length, so its RIFF and data
sizes are 0xFFFFFFFF ("until the end", as streamed WAVs carry them), and a streamed FLAC's STREAMINFO
has no total. ``encode_whole`` makes a file whose headers carry the real length (WAV sizes, FLAC
totals), for answers sent once complete.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Sequence

import numpy as np

FORMATS = ("mp3", "opus", "aac", "flac", "wav", "pcm")
MIME = {"mp3": "audio/mpeg", "opus": "audio/ogg", "aac": "audio/aac", "flac": "audio/flac",
        "wav": "audio/wav", "pcm": "audio/pcm"}
# response_format -> (FFmpeg muxer, encoder)
_AV = {"mp3": ("mp3", "libmp3lame"), "opus": ("ogg", "libopus"), "aac": ("adts", "aac"),
       "flac": ("flac", "flac")}
_UNKNOWN = 0xFFFFFFFF


def _pcm16(samples: np.ndarray) -> np.ndarray:
    return (np.clip(np.asarray(samples, dtype=np.float32), -1.0, 1.0) * 32767.0).round().astype("<i2")


def wav_header(rate: int, data_bytes: int | None) -> bytes:
    """A 44-byte PCM WAV header; ``data_bytes`` None: the streamed form (sizes unknown)."""
    data = _UNKNOWN if data_bytes is None else data_bytes
    riff = _UNKNOWN if data_bytes is None else 36 + data_bytes
    fmt = struct.pack("<IHHIIHH", 16, 1, 1, rate, 2 * rate, 2, 16)  # PCM, mono, 16-bit
    return b"RIFF" + struct.pack("<I", riff) + b"WAVEfmt " + fmt + b"data" + struct.pack("<I", data)


class _Sink:
    """A write-only file object: the muxer cannot seek back, so it writes in order."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, data) -> int:
        self.parts.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        out = b"".join(self.parts)
        self.parts.clear()
        return out


class StreamEncoder:
    def __init__(self, fmt: str, rate: int, sink=None) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"unknown format {fmt!r}")
        self.fmt, self.rate = fmt, rate
        self._header = fmt == "wav"
        self._pts = 0
        self._container = self._stream = None
        if fmt in _AV:
            import av

            self._sink = sink if sink is not None else _Sink()
            muxer, codec = _AV[fmt]
            self._container = av.open(self._sink, mode="w", format=muxer)
            self._stream = self._container.add_stream(codec, rate=rate)
            self._stream.layout = "mono"

    def push(self, samples: np.ndarray) -> bytes:
        if self._stream is None:
            head = wav_header(self.rate, None) if self._header else b""
            self._header = False
            return head + _pcm16(samples).tobytes()
        import av

        if len(samples) == 0:
            return b""
        # 16-bit frames: what every format here carries; PyAV converts them to the encoder's own layout.
        frame = av.AudioFrame.from_ndarray(_pcm16(samples).reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = self.rate
        frame.pts = self._pts
        self._pts += len(samples)
        for packet in self._stream.encode(frame):
            self._container.mux(packet)
        return self._take()

    def finish(self) -> bytes:
        if self._stream is None:
            head = wav_header(self.rate, None) if self._header else b""
            self._header = False
            return head
        for packet in self._stream.encode(None):
            self._container.mux(packet)
        self._container.close()
        self._stream = None
        return self._take()

    def close(self) -> None:
        """Free the encoder without finishing the file (a request that ended early)."""
        if self._container is not None and self._stream is not None:
            self._stream = None
            try:
                self._container.close()
            except Exception:
                pass

    def _take(self) -> bytes:
        return self._sink.take() if isinstance(self._sink, _Sink) else b""


def encode_whole(chunks: Sequence[np.ndarray], fmt: str, rate: int) -> bytes:
    """One complete file whose headers carry the real length."""
    samples = np.concatenate(chunks) if len(chunks) else np.zeros(0, np.float32)
    if fmt == "wav":
        pcm = _pcm16(samples).tobytes()
        return wav_header(rate, len(pcm)) + pcm
    if fmt == "flac":  # a seekable target: the muxer writes the totals into STREAMINFO at the end
        target = io.BytesIO()
        encoder = StreamEncoder(fmt, rate, sink=target)
        encoder.push(samples)
        encoder.finish()
        return target.getvalue()
    encoder = StreamEncoder(fmt, rate)
    return encoder.push(samples) + encoder.finish()
