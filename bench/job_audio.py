"""What the job layer's own audio work costs next to the audio it handles, on this CPU.

    python bench/job_audio.py [--seconds 10] [--repeat 7]

For a reference clip and a generated clip of ``--seconds`` each (a speech-like test signal), times the
steps a TTS job adds around the model: decoding the reference (WAV 44.1 kHz stereo, MP3), resampling it
to 24 kHz and the output to 16 kHz for alignment, and encoding the output in each format; and the
streaming resampler against the one-shot one. Each step runs ``--repeat`` times, interleaved, and the
median is reported as a real-time factor (seconds of work per second of audio: a ratio, so a shared,
busy machine shifts it less than raw times) and relative to encoding WAV, measured in the same run.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import soundfile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from worker.jobs import audio


def signal(seconds: float, rate: int) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    phase = 2 * np.pi * np.cumsum(140 + 30 * np.sin(2 * np.pi * 0.7 * t)) / rate
    tone = sum(np.sin(k * phase) / k for k in range(1, 6))
    return (0.25 * tone * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t) ** 2)).astype(np.float32)


def file_bytes(samples: np.ndarray, rate: int, fmt: str, channels: int = 1) -> bytes:
    data = np.stack([samples] * channels, axis=1) if channels > 1 else samples
    buffer = io.BytesIO()
    soundfile.write(buffer, data, rate, format=fmt)
    return buffer.getvalue()


def stream_resample(samples: np.ndarray, pieces: int) -> np.ndarray:
    resampler = audio.StreamResampler(24000, 16000)
    parts = [resampler.push(p) for p in np.array_split(samples, pieces)]
    parts.append(resampler.push(np.zeros(0, np.float32), last=True))
    return np.concatenate(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args(argv)
    seconds = args.seconds
    ref44 = signal(seconds, 44100)
    out24 = signal(seconds, 24000)
    wav_ref = file_bytes(ref44, 44100, "WAV", channels=2)
    mp3_ref = file_bytes(ref44, 44100, "MP3")
    steps: dict[str, Callable[[], object]] = {
        "decode reference WAV 44.1 kHz stereo": lambda: audio.decode(wav_ref, "x", 1e9),
        "decode reference MP3 44.1 kHz": lambda: audio.decode(mp3_ref, "x", 1e9),
        "resample 44.1 -> 24 kHz": lambda: audio.resample(ref44, 44100, 24000),
        "resample 24 -> 16 kHz (alignment)": lambda: audio.resample(out24, 24000, 16000),
        "stream-resample 24 -> 16 kHz, 8 pieces": lambda: stream_resample(out24, 8),
        "encode WAV": lambda: audio.encode(out24, 24000, "wav"),
        "encode FLAC": lambda: audio.encode(out24, 24000, "flac"),
        "encode OGG Vorbis": lambda: audio.encode(out24, 24000, "ogg"),
        "encode MP3": lambda: audio.encode(out24, 24000, "mp3"),
        "base64 of the WAV": lambda: audio.b64(audio.encode(out24, 24000, "wav")),
    }
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.repeat):
        for name, step in steps.items():
            started = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - started)
    wav = statistics.median(times["encode WAV"])
    print(f"{seconds:g} s of audio, median of {args.repeat} interleaved runs")
    print("| step | real-time factor | x encode WAV |")
    print("| --- | ---: | ---: |")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"| {name} | {median / seconds:.5f} | {median / wav:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
