"""Job audio: base64 and URL sources, decoding of real files, resampling quality, encoding round trips."""

from __future__ import annotations

import io
import itertools
import struct
import tracemalloc

import numpy as np
import pytest
import soundfile
from hypothesis import given, settings
from hypothesis import strategies as st
from jobkit import AudioServer, audio_bytes, b64, voice_like

from worker.jobs import audio
from worker.jobs.audio import AudioError
from worker.jobs.urlfetch import FetchPolicy, UrlFetchError, fetch

OPEN = FetchPolicy(max_bytes=2_000_000, timeout_s=3.0, max_redirects=3, allow_private=True)
STRICT = FetchPolicy(max_bytes=2_000_000, timeout_s=3.0)


@pytest.fixture(scope="module")
def server():
    with AudioServer() as running:
        yield running


@pytest.fixture(scope="module")
def wav() -> bytes:
    return audio_bytes(voice_like(1.0, 16000), 16000)


# ------------------------------------------------------------------ sources
def test_base64_and_data_uri(wav: bytes) -> None:
    assert audio.read_source(b64(wav), OPEN, "input.ref_audio") == wav
    assert audio.read_source("data:audio/wav;base64," + b64(wav), OPEN, "input.ref_audio") == wav
    wrapped = "\n".join(b64(wav)[i:i + 76] for i in range(0, len(b64(wav)), 76))
    assert audio.read_source(wrapped, OPEN, "input.ref_audio") == wav


@pytest.mark.parametrize("value", ["/etc/passwd", "file:///etc/passwd", "./voice.wav", "~/a.wav",
                                   "ftp://example.org/a.wav", "s3://bucket/a.wav",
                                   "/tmp/abcd", "/runpod-volume/voices/a"])  # the last two: valid base64
def test_local_paths_and_other_schemes_are_refused(value: str) -> None:
    with pytest.raises(AudioError, match=r"input\.ref_audio: local paths and non-http\(s\) URLs"):
        audio.read_source(value, OPEN, "input.ref_audio")


def test_bad_base64_and_oversize() -> None:
    with pytest.raises(AudioError, match=r"input\.audio: neither an http\(s\) URL nor valid base64"):
        audio.read_source("not base64 at all!", OPEN, "input.audio")
    small = FetchPolicy(max_bytes=1000, timeout_s=1)
    with pytest.raises(AudioError, match="the limit is 1000"):
        audio.read_source(b64(b"\0" * 5000), small, "input.audio")


def test_url_fetch(server: AudioServer, wav: bytes) -> None:
    server.file("/ok.wav", wav)
    assert fetch(server.url("/ok.wav"), OPEN) == wav
    assert audio.read_source(server.url("/ok.wav?x=1"), OPEN, "input.ref_audio") == wav


def test_loopback_is_refused_unless_allowed(server: AudioServer, wav: bytes) -> None:
    server.file("/ok.wav", wav)
    with pytest.raises(UrlFetchError, match=r"resolves to a non-public address .127\.0\.0\.1."):
        fetch(server.url("/ok.wav"), STRICT)
    with pytest.raises(UrlFetchError, match="non-public address"):
        fetch(server.url("/ok.wav").replace("127.0.0.1", "localhost"), STRICT)


def test_redirects_are_followed_and_bounded(server: AudioServer, wav: bytes) -> None:
    server.file("/ok.wav", wav)
    server.redirect("/r1", "/r2", 301)
    server.redirect("/r2", server.url("/ok.wav"), 307)
    assert fetch(server.url("/r1"), OPEN) == wav
    server.redirect("/loop", "/loop")
    with pytest.raises(UrlFetchError, match="more than 3 redirects"):
        fetch(server.url("/loop"), OPEN)
    server.redirect("/to-file", "file:///etc/passwd")
    with pytest.raises(UrlFetchError, match=r"only http.s. URLs are accepted"):
        fetch(server.url("/to-file"), OPEN)


def test_private_addresses_are_refused_before_connecting() -> None:
    # Refused at the address check: no packet leaves for the metadata service or a private network.
    for url in ("http://169.254.169.254/latest/meta-data", "http://10.0.0.1/a.wav", "http://[::1]:9/a.wav",
                "http://0.0.0.0/a.wav"):
        with pytest.raises(UrlFetchError, match="non-public address"):
            fetch(url, STRICT)


def test_too_large(server: AudioServer) -> None:
    server.file("/big.wav", b"\0" * 50_000)
    small = FetchPolicy(max_bytes=10_000, timeout_s=3, allow_private=True)
    with pytest.raises(UrlFetchError, match="the file is 50000 bytes; the limit is 10000"):
        fetch(server.url("/big.wav"), small)
    server.endless("/endless")
    with pytest.raises(UrlFetchError, match="passed the limit of 10000 bytes"):
        fetch(server.url("/endless"), small)


def test_too_slow(server: AudioServer, wav: bytes) -> None:
    server.trickle("/slow.wav", wav[:4000], delay=0.05)
    quick = FetchPolicy(max_bytes=100_000, timeout_s=0.5, allow_private=True)
    with pytest.raises(UrlFetchError, match=r"took longer than 0\.5 s"):
        fetch(server.url("/slow.wav"), quick)


def test_wrong_content_and_http_errors(server: AudioServer) -> None:
    server.file("/page", b"<html>hello</html>", content_type="text/html; charset=utf-8")
    with pytest.raises(UrlFetchError, match="served 'text/html', not audio"):
        fetch(server.url("/page"), OPEN)
    with pytest.raises(UrlFetchError, match="answered HTTP 404"):
        fetch(server.url("/missing"), OPEN)
    server.file("/noise.bin", b"\x01\x02" * 500, content_type="application/octet-stream")
    data = fetch(server.url("/noise.bin"), OPEN)
    with pytest.raises(AudioError, match=r"input\.ref_audio: not readable audio"):
        audio.decode(data, "input.ref_audio", 30)


def test_unreachable_port() -> None:
    with pytest.raises(UrlFetchError, match="could not download"):
        fetch("http://127.0.0.1:9/a.wav", OPEN)


# ------------------------------------------------------------------ decode
@pytest.mark.parametrize(("fmt", "subtype"), [("WAV", "PCM_16"), ("WAV", "FLOAT"), ("FLAC", None),
                                              ("OGG", "VORBIS"), ("MP3", None)])
def test_decode_formats(fmt: str, subtype: str | None) -> None:
    source = voice_like(1.0, 22050)
    clip = audio.decode(audio_bytes(source, 22050, fmt, subtype), "input.audio", 30)
    assert clip.sample_rate == 22050 and clip.samples.dtype == np.float32 and clip.samples.ndim == 1
    assert abs(clip.duration - 1.0) < 0.1  # mp3 adds encoder padding
    if fmt in ("WAV", "FLAC"):
        assert np.max(np.abs(clip.samples - source)) < 1e-3


def test_decode_stereo_to_mono_and_limits() -> None:
    clip = audio.decode(audio_bytes(voice_like(2.0, 16000), 16000, channels=2), "input.audio", 30)
    assert clip.samples.ndim == 1 and len(clip.samples) == 32000
    with pytest.raises(AudioError, match=r"input\.ref_audio: the audio is 2\.0 s long; the limit is 1\.5 s"):
        audio.decode(audio_bytes(voice_like(2.0, 16000), 16000), "input.ref_audio", 1.5)
    with pytest.raises(AudioError, match="no samples"):
        audio.decode(audio_bytes(np.zeros(0, np.float32), 16000), "input.audio", 30)


# ------------------------------------------------------------------ resample
def _tone(freq: float, rate: int, seconds: float = 1.0) -> np.ndarray:
    return np.sin(2 * np.pi * freq * np.arange(int(rate * seconds)) / rate).astype(np.float32)


@pytest.mark.parametrize(("src", "dst"), [(44100, 24000), (48000, 16000), (16000, 24000), (22050, 24000)])
def test_resample_keeps_passband_and_length(src: int, dst: int) -> None:
    out = audio.resample(_tone(1000, src), src, dst)
    assert len(out) == dst
    reference = _tone(1000, dst)
    middle = slice(dst // 10, -dst // 10)  # edges see the filter's ramp
    assert np.max(np.abs(out[middle] - reference[middle])) < 0.01


def test_resample_rejects_aliases() -> None:
    # 15 kHz cannot exist at 24 kHz: a naive decimator would fold it to 9 kHz at full strength.
    out = audio.resample(_tone(15000, 48000), 48000, 24000)
    assert np.sqrt(np.mean(out[2400:-2400] ** 2)) < 1e-3
    same = _tone(440, 24000)
    assert np.array_equal(audio.resample(same, 24000, 24000), same)


@pytest.mark.parametrize("dst", [8000, 16000, 22050, 24000, 44100, 48000])
def test_stream_resampler_equals_the_whole(dst: int) -> None:
    source = voice_like(3.0, 24000, seed=4)
    cuts = [0, 1, 500, 501, 20000, 47999, 60000, len(source)]
    resampler = audio.StreamResampler(24000, dst)
    parts = [resampler.push(source[a:b]) for a, b in itertools.pairwise(cuts)]
    parts.append(resampler.push(np.zeros(0, np.float32), last=True))
    whole = audio.resample(source, 24000, dst)
    joined = np.concatenate(parts)
    assert joined.shape == whole.shape and np.max(np.abs(joined - whole)) < 1e-6
    # Nothing is held back longer than the filter needs.
    assert sum(p.size for p in parts[:-1]) >= whole.size - 40


# ------------------------------------------------------------------ encode
@pytest.mark.parametrize("fmt", ["wav", "flac", "ogg", "mp3"])
def test_encode_round_trip(fmt: str) -> None:
    source = voice_like(3.0, 24000)
    data = audio.encode(source, 24000, fmt)
    info = soundfile.info(io.BytesIO(data))
    assert info.samplerate == 24000 and info.channels == 1
    back = audio.decode(data, "x", 30)
    assert abs(back.duration - 3.0) < 0.1
    if fmt in ("wav", "flac"):
        assert np.max(np.abs(back.samples - source)) < 1e-3
    else:  # lossy: the signal's energy survives
        n = min(len(back.samples), len(source))
        ratio = np.sqrt(np.mean(back.samples[:n] ** 2)) / np.sqrt(np.mean(source[:n] ** 2))
        assert 0.7 < ratio < 1.3


def test_encoded_pieces_stay_under_the_cap_and_cover_everything() -> None:
    source = voice_like(10.0, 24000)
    pieces = list(audio.encoded_pieces(source, 24000, "wav", 100_000))
    assert len(pieces) > 1 and all(len(p) <= 100_000 for p in pieces)
    joined = np.concatenate([audio.decode(audio.read_source(p, OPEN, "x"), "x", 30).samples for p in pieces])
    assert len(joined) == len(source) and np.max(np.abs(joined - source)) < 1e-3


# ------------------------------------------------------------------ hostile headers
def _wav(rate: int, channels: int, bits: int, tag: int, declared: int, payload: bytes) -> bytes:
    """A WAV file written by hand, so its header can say anything (the payload is what is there)."""
    block = max(1, channels * bits // 8)
    fmt = struct.pack("<HHIIHH", tag, channels, rate, (rate * block) & 0xFFFFFFFF, block & 0xFFFF, bits)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", declared)
    return b"RIFF" + struct.pack("<I", (len(body) + len(payload)) & 0xFFFFFFFF) + body + payload


def _flac_with(header_rate: int, header_channels: int, total: int, seconds: float = 0.3) -> bytes:
    """A real FLAC whose STREAMINFO then claims another rate, channel count and length."""
    data = bytearray(audio_bytes(voice_like(seconds, 16000, seed=2), 16000, "FLAC"))
    assert data[:4] == b"fLaC"
    at = 8 + 10  # after the marker, the block header and the block/frame size fields
    packed = int.from_bytes(data[at:at + 8], "big")
    bits_per_sample = (packed >> 36) & 0x1F
    packed = ((header_rate & 0xFFFFF) << 44) | (((header_channels - 1) & 0x7) << 41) \
        | (bits_per_sample << 36) | (total & 0xFFFFFFFFF)
    data[at:at + 8] = packed.to_bytes(8, "big")
    return bytes(data)


wav_headers = st.builds(
    _wav,
    rate=st.one_of(st.integers(0, 2**32 - 1), st.sampled_from([4_000_001, 10_000_001, 2**31 - 1, 44101,
                                                               383_999, 4001, 1, 8000, 48000])),
    channels=st.one_of(st.integers(0, 2000), st.integers(1, 9)),
    bits=st.sampled_from([8, 16, 24, 32]),
    tag=st.sampled_from([1, 3]),
    declared=st.one_of(st.integers(0, 2**32 - 1), st.integers(0, 60_000)),
    payload=st.integers(0, 50_000).map(lambda n: bytes(n % 251 for n in range(n))),
)
flac_headers = st.builds(_flac_with, header_rate=st.integers(1, 2**20 - 1), header_channels=st.integers(1, 8),
                         total=st.one_of(st.integers(0, 2**36 - 1), st.integers(0, 10_000)))


def _peak_bytes(work) -> tuple[object, int]:
    """What ``work()`` returns (or raises) and the peak of Python/numpy memory it allocated."""
    tracemalloc.start()
    try:
        try:
            result: object = work()
        except AudioError as err:
            result = err
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@settings(max_examples=150, deadline=None)
@given(data=st.one_of(wav_headers, flac_headers), seconds=st.sampled_from([20.0, 1800.0]))
def test_a_lying_header_is_refused_or_decoded_in_bounded_memory(data: bytes, seconds: float) -> None:
    # The job paths: a reference (decoded at its own rate, then resampled to the TTS rate) and a
    # transcription input (resampled to the ASR rate while it is decoded).
    def reference() -> object:
        clip = audio.decode(data, "input.ref_audio", seconds)
        return clip, audio.to_rate(clip, 24000)

    for work in (reference, lambda: audio.decode(data, "input.audio", seconds, rate=16000)):
        result, peak = _peak_bytes(work)
        if isinstance(result, AudioError):
            assert str(result).startswith(("input.ref_audio: ", "input.audio: ")), result
        # ~50 KB of input: whatever its header says, memory stays that of a small file.
        assert peak < 48 << 20, (peak, result)


def test_the_adversarial_rates_are_refused_by_name() -> None:
    payload = bytes(5000)
    for rate in (4_000_001, 10_000_001, 2**31 - 1):
        with pytest.raises(AudioError, match=rf"input\.ref_audio: the header says {rate} Hz; accepted "
                                             r"sample rates are 4000 to 384000 Hz"):
            audio.decode(_wav(rate, 1, 16, 1, len(payload), payload), "input.ref_audio", 20)
    with pytest.raises(AudioError, match="the header says 1000 channels; at most 8"):
        audio.decode(_wav(16000, 1000, 16, 1, len(payload), payload), "input.audio", 20)
    with pytest.raises(AudioError, match=r"the audio is 4294967.\d s long; the limit is 20 s"):
        audio.decode(_flac_with(16000, 1, 2**36 - 1), "input.audio", 20)


def test_an_odd_rate_resamples_with_a_small_filter_and_keeps_the_signal() -> None:
    rate = 44101  # coprime with 24000: the exact ratio would need a filter of ~900k taps
    clip = audio.decode(audio_bytes(_tone(1000, rate), rate), "input.ref_audio", 20)
    out, peak = _peak_bytes(lambda: audio.to_rate(clip, 24000))
    assert peak < 32 << 20
    assert abs(len(out) - 24000) <= 3  # the ratio is off by far less than 0.02 %
    reference = _tone(1000, 24000)
    assert np.max(np.abs(out[2400:-2400] - reference[2400:-2400])) < 0.02


def test_decoding_at_a_rate_equals_decoding_then_resampling() -> None:
    data = audio_bytes(voice_like(3.0, 44100, seed=8), 44100, channels=2)
    whole = audio.resample(audio.decode(data, "input.audio", 30).samples, 44100, 16000)
    streamed = audio.decode(data, "input.audio", 30, rate=16000)
    assert streamed.sample_rate == 16000 and streamed.samples.shape == whole.shape
    assert np.max(np.abs(streamed.samples - whole)) < 1e-5


# ------------------------------------------------------------------ base64 of any encoding
ENCODINGS = [("WAV", "PCM_16"), ("WAV", "FLOAT"), ("FLAC", None), ("OGG", "VORBIS"), ("MP3", None)]


@settings(max_examples=60, deadline=None)
@given(encoding=st.sampled_from(ENCODINGS), rate=st.sampled_from([8000, 16000, 22050, 24000, 44100, 48000]),
       channels=st.integers(1, 2), seconds=st.floats(0.1, 1.0), seed=st.integers(0, 2**16),
       wrap=st.sampled_from([0, 64, 76]), data_uri=st.booleans())
def test_base64_of_any_audio_encoding_is_read_as_base64(encoding, rate, channels, seconds, seed, wrap,
                                                        data_uri) -> None:
    fmt, subtype = encoding
    if fmt == "MP3" and rate not in (8000, 16000, 22050, 24000, 44100, 48000):
        return
    rng = np.random.default_rng(seed)
    samples = (0.3 * rng.standard_normal(int(seconds * rate))).astype(np.float32)
    data = audio_bytes(samples, rate, fmt, subtype, channels=channels)
    text = b64(data)
    if wrap:
        text = "\n".join(text[i:i + wrap] for i in range(0, len(text), wrap))
    if data_uri:
        text = "data:audio/x;base64," + text
    assert audio.read_source(text, OPEN, "input.audio") == data
    clip = audio.decode(data, "input.audio", 30)
    assert clip.sample_rate == rate and clip.samples.size > 0


def test_an_mp3_without_an_id3_tag_starts_with_slashes_and_is_accepted() -> None:
    data = audio.encode(voice_like(1.0, 24000), 24000, "mp3")
    text = b64(data)
    assert text.startswith("//")  # the frame sync 0xFFFx: the case that used to be taken for a path
    assert audio.read_source(text, OPEN, "input.audio") == data
