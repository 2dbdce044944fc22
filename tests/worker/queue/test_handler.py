"""The handler with the real Engine on tiny generated models: every task, streaming, limits, errors."""

from __future__ import annotations

import dataclasses
import inspect

import numpy as np
import pytest
from jobkit import AudioServer, audio_bytes, b64, decode_b64, tiny_engine, voice_like

from worker.jobs.runner import is_fatal
from worker.jobs.subtitles import to_srt
from worker.queue.handler import (
    Handler,
    make_handler,
    make_plain_handler,
    make_streaming_handler,
    runs_local_test,
    start_config,
)
from worker.settings import JobSettings, Settings


@dataclasses.dataclass(frozen=True)
class Word:
    word: str
    start: float
    end: float

REF_RATE = 16000
TEXT = "Hello there. This is a test of the worker, with two sentences."


@pytest.fixture(scope="module")
def engine_config():
    return tiny_engine()


@pytest.fixture(scope="module")
def voices_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("voices")
    (directory / "alice.wav").write_bytes(audio_bytes(voice_like(1.2, 24000, seed=3), 24000))
    (directory / "alice.txt").write_text("Hi, I am Alice.\n")
    (directory / "bob.wav").write_bytes(audio_bytes(voice_like(0.8, 22050, seed=4), 22050, "FLAC"))
    return directory


@pytest.fixture(scope="module")
def limits(voices_dir):
    return JobSettings(voices_dir=voices_dir, allow_private_urls=True, url_timeout_s=5.0)


@pytest.fixture(scope="module")
def core(engine_config, limits) -> Handler:
    engine, config = engine_config
    return Handler(engine, config, limits)


@pytest.fixture(scope="module")
def ref_b64() -> str:
    return b64(audio_bytes(voice_like(1.0, REF_RATE, seed=1), REF_RATE))


def tts(core: Handler, **fields) -> dict:
    return core.run({"id": "t", "input": {"text": TEXT, "seed": 5, "nfe_step": 4, **fields}})


def ok(output: dict) -> dict:
    assert "error" not in output, output.get("error")
    return output


def test_tts_output_contract(core: Handler, ref_b64: str, engine_config) -> None:
    engine, _ = engine_config
    out = ok(tts(core, ref_audio=ref_b64, ref_text="A short reference."))
    assert set(out) == {"audio", "format", "sample_rate", "duration", "ref_text", "timings"}
    samples, rate = decode_b64(out["audio"])
    assert rate == engine.sample_rate == out["sample_rate"] and out["format"] == "wav"
    assert samples.size > 0 and abs(out["duration"] - samples.size / rate) < 0.01
    assert out["ref_text"] == "A short reference."
    assert set(out["timings"]) == {"prep", "synth", "align", "total"}
    assert out["timings"]["total"] >= out["timings"]["synth"] >= 0


def test_same_seed_same_audio(core: Handler, ref_b64: str) -> None:
    first = ok(tts(core, ref_audio=ref_b64, ref_text="A short reference."))["audio"]
    again = ok(tts(core, ref_audio=ref_b64, ref_text="A short reference."))["audio"]
    other = ok(tts(core, ref_audio=ref_b64, ref_text="A short reference.", seed=6))["audio"]
    assert first == again
    assert not np.array_equal(decode_b64(first)[0], decode_b64(other)[0])


@pytest.mark.parametrize(("fmt", "rate"), [("mp3", 24000), ("flac", 16000), ("ogg", 48000), ("wav", 8000)])
def test_formats_and_rates(core: Handler, ref_b64: str, fmt: str, rate: int) -> None:
    out = ok(tts(core, ref_audio=ref_b64, ref_text="A short reference.", format=fmt, sample_rate=rate))
    samples, got_rate = decode_b64(out["audio"])
    assert out["format"] == fmt and got_rate == rate == out["sample_rate"]
    assert abs(samples.size / rate - out["duration"]) < 0.1


def test_missing_ref_text_is_transcribed_once_and_cached(core: Handler, engine_config) -> None:
    engine, _ = engine_config
    reference = audio_bytes(voice_like(1.5, REF_RATE, seed=11), REF_RATE)
    hits = core.jobs.ref_texts.hits
    first = ok(tts(core, ref_audio=b64(reference)))
    expected = engine.transcribe(np.asarray(_at(reference, engine.asr_sample_rate)), word_timestamps=False)
    assert first["ref_text"] == expected.text.strip()
    second = ok(tts(core, ref_audio=b64(reference)))
    assert second["ref_text"] == first["ref_text"] and core.jobs.ref_texts.hits == hits + 1


def _at(data: bytes, rate: int) -> np.ndarray:
    from worker.jobs import audio

    return audio.to_rate(audio.decode(data, "x", 60), rate)


def test_timestamps_and_subtitles(core: Handler, ref_b64: str) -> None:
    out = ok(tts(core, ref_audio=ref_b64, ref_text="A short reference.", timestamps=True, subtitles="srt"))
    words = out["words"]
    assert words and all(set(w) == {"word", "start", "end"} for w in words)
    assert all(0 <= w["start"] <= w["end"] <= out["duration"] + 0.05 for w in words)
    assert [w["start"] for w in words] == sorted(w["start"] for w in words)
    assert " ".join(w["word"] for w in words) == " ".join(TEXT.split())
    timed = [Word(w["word"], w["start"], w["end"]) for w in words]
    assert out["subtitles_format"] == "srt" and out["subtitles"] == to_srt(timed)
    assert out["timings"]["align"] > 0
    vtt = ok(tts(core, ref_audio=ref_b64, ref_text="A short reference.", subtitles="vtt"))
    assert vtt["subtitles"].startswith("WEBVTT") and "words" not in vtt


def test_voice_presets(core: Handler, voices_dir) -> None:
    listed = ok(core.run({"input": {"task": "voices"}}))["voices"]
    assert [v["name"] for v in listed] == ["alice", "bob"]
    assert listed[0]["ref_text"] == "Hi, I am Alice." and listed[0]["sample_rate"] == 24000
    out = ok(tts(core, voice="alice"))
    assert out["ref_text"] == "Hi, I am Alice."
    given = ok(tts(core, voice="alice", ref_text="Override text."))
    assert given["ref_text"] == "Override text."
    missing = tts(core, voice="carol")
    assert missing["error"].startswith("input.voice: no preset named 'carol' (available: alice, bob)")
    escape = tts(core, voice="../alice")
    assert escape["error"].startswith("input.voice: must be a preset name")


def test_reference_by_url(core: Handler) -> None:
    data = audio_bytes(voice_like(1.0, 44100, seed=2), 44100, "FLAC")
    with AudioServer() as server:
        server.file("/ref.flac", data, content_type="audio/flac")
        server.redirect("/go", "/ref.flac")
        out = ok(tts(core, ref_audio=server.url("/go"), ref_text="A short reference."))
        assert server.hits["/ref.flac"] == 1 and decode_b64(out["audio"])[0].size > 0
        bad = tts(core, ref_audio=server.url("/nothing.wav"), ref_text="x")
        assert bad["error"].startswith("input.ref_audio: the URL answered HTTP 404")


def test_private_urls_refused_by_default(engine_config) -> None:
    engine, config = engine_config
    strict = Handler(engine, config, JobSettings(voices_dir=config.volume / "none"))
    out = tts(strict, ref_audio="http://127.0.0.1:9/ref.wav", ref_text="x")
    assert out["error"].startswith("input.ref_audio: host '127.0.0.1' resolves to a non-public address")


def test_transcribe(core: Handler) -> None:
    data = audio_bytes(voice_like(2.0, 22050, seed=9), 22050, "OGG", "VORBIS")
    out = ok(core.run({"input": {"task": "transcribe", "audio": b64(data), "language": "en",
                                 "subtitles": "vtt"}}))
    assert {"text", "language", "duration", "segments", "words", "subtitles", "timings"} <= set(out)
    assert out["language"] == "en" and abs(out["duration"] - 2.0) < 0.1
    assert all(set(s) == {"text", "start", "end"} for s in out["segments"])
    assert out["subtitles"].startswith("WEBVTT")
    plain = ok(core.run({"input": {"task": "transcribe", "audio": b64(data), "timestamps": False}}))
    assert "words" not in plain and isinstance(plain["language"], str)


@pytest.mark.parametrize("rate", [24000, 16000])
def test_streaming_chunks_equal_the_whole(engine_config, limits, ref_b64: str, rate: int) -> None:
    engine, config = engine_config
    small = dataclasses.replace(limits, stream_chunk_bytes=20_000)
    handler = make_streaming_handler(engine, config, small)
    assert inspect.isgeneratorfunction(handler)
    long_text = " ".join([TEXT] * 4)
    job = {"text": long_text, "ref_audio": ref_b64, "ref_text": "A short reference.", "seed": 3,
           "nfe_step": 4, "timestamps": True, "sample_rate": rate}
    items = list(handler({"id": "s", "input": {**job, "stream": True}}))
    chunks, summary = items[:-1], items[-1]
    assert summary["done"] is True and summary["chunks"] == len(chunks) > 1
    assert [c["chunk"] for c in chunks] == list(range(len(chunks)))
    assert all(len(c["audio"]) <= 20_000 for c in chunks)
    assert "first_chunk" in summary["timings"] and summary["words"]
    assert all(decode_b64(c["audio"])[1] == rate for c in chunks)
    streamed = np.concatenate([decode_b64(c["audio"])[0] for c in chunks])
    whole_core = Handler(engine, config, dataclasses.replace(limits, max_response_bytes=50_000_000))
    whole = ok(whole_core.run({"id": "w", "input": job}))
    # Same samples as the whole (16-bit WAV: resampled pieces may round one step differently).
    reference = decode_b64(whole["audio"])[0]
    assert streamed.shape == reference.shape and np.max(np.abs(streamed - reference)) <= 1 / 32768
    assert abs(summary["duration"] - whole["duration"]) < 1e-3


def test_generator_handler_non_stream_job_yields_one_output(engine_config, limits, ref_b64: str) -> None:
    engine, config = engine_config
    items = list(make_streaming_handler(engine, config, limits)(
        {"id": "g", "input": {"text": "Hi.", "ref_audio": ref_b64, "ref_text": "Ref.", "nfe_step": 2}}))
    assert len(items) == 1 and "audio" in items[0]
    bad = list(make_streaming_handler(engine, config, limits)({"id": "g", "input": {"txt": "Hi."}}))
    assert len(bad) == 1 and bad[0]["error"].startswith("input.txt: unknown field")


def test_response_limit_without_bucket(engine_config, limits, ref_b64: str) -> None:
    engine, config = engine_config
    tight = Handler(engine, config, dataclasses.replace(limits, max_response_bytes=20_000))
    out = tts(tight, ref_audio=ref_b64, ref_text="A short reference.")
    assert out["error"].startswith("output: the response would be")
    assert "over the limit of 20000 bytes" in out["error"] and "BUCKET_ENDPOINT_URL" in out["error"]
    assert "audio" in ok(tts(tight, ref_audio=ref_b64, ref_text="A short reference.", format="mp3",
                             sample_rate=8000, text="Hi."))


def test_bad_inputs_then_still_serving(core: Handler, ref_b64: str) -> None:
    for job in ({"input": None}, {}, {"input": {"text": 5}}, {"input": {"task": "transcribe"}},
                {"input": {"text": "Hi.", "ref_audio": "bm90IGF1ZGlv"}},
                {"input": {"text": "Hi.", "ref_audio": "/etc/passwd"}},
                {"input": {"text": "Hi.", "ref_audio": ref_b64, "language": "xx", "timestamps": True}}):
        out = core.run(job)
        assert set(out) == {"error"} and out["error"].startswith("input"), out
    assert "audio" in ok(tts(core, ref_audio=ref_b64, ref_text="A short reference."))


def test_fatal_errors_ask_for_a_fresh_worker(core: Handler) -> None:
    import torch

    assert is_fatal(torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert is_fatal(RuntimeError("CUDA error: an illegal memory access was encountered"))
    assert not is_fatal(RuntimeError("shape mismatch"))
    assert not is_fatal(ValueError("CUDA error"))
    called = []
    fatal = Handler(core.jobs.engine, core.jobs.engine.config, core.limits, on_fatal=lambda: called.append(1))
    out = fatal.runner.failure(torch.cuda.OutOfMemoryError("CUDA out of memory"), "j")
    assert out["refresh_worker"] is True and "GPU failure" in out["error"] and called == [1]
    other = fatal.runner.failure(KeyError("boom"), "j")
    assert "refresh_worker" not in other and other["error"].startswith("internal error (KeyError")


def test_start_config_shapes(engine_config, limits, monkeypatch) -> None:
    engine, config = engine_config
    assert runs_local_test(["--test_input", "{}"], {"RUNPOD_WEBHOOK_GET_JOB": "x"})
    assert not runs_local_test(["--rp_serve_api"], {})
    assert runs_local_test([], {}) and not runs_local_test([], {"RUNPOD_WEBHOOK_GET_JOB": "x"})
    settings = Settings(config, limits)
    streaming = start_config(engine, settings, streaming=True)
    assert inspect.isgeneratorfunction(streaming["handler"]) and streaming["return_aggregate_stream"]
    streaming["handler"].core.runner.on_fatal()
    assert streaming["refresh_worker"] is True
    plain = start_config(engine, settings, streaming=False)
    assert not inspect.isgeneratorfunction(plain["handler"])
    monkeypatch.setenv("RUNPOD_WEBHOOK_GET_JOB", "https://example.invalid/job-take/$ID")
    monkeypatch.setattr("sys.argv", ["worker"])
    monkeypatch.delenv("WORKER_STREAMING", raising=False)
    default = JobSettings.from_env(volume=limits.voices_dir.parent)
    assert not inspect.isgeneratorfunction(make_handler(engine, config, default))  # the default: plain
    monkeypatch.setenv("WORKER_STREAMING", "1")
    streamed = JobSettings.from_env(volume=limits.voices_dir.parent)
    assert inspect.isgeneratorfunction(make_handler(engine, config, streamed))  # production, streaming
    monkeypatch.setattr("sys.argv", ["worker", "--test_input", "{}"])
    assert not inspect.isgeneratorfunction(make_handler(engine, config, streamed))  # local test job
    monkeypatch.setattr("sys.argv", ["worker", "--rp_serve_api"])
    assert inspect.isgeneratorfunction(make_handler(engine, config, streamed))  # local API
    unstreamed = Settings(config, dataclasses.replace(limits, streaming=False))  # WORKER_STREAMING=0
    assert not inspect.isgeneratorfunction(start_config(engine, unstreamed)["handler"])


def test_plain_handler_returns_the_dict(engine_config, limits, ref_b64: str) -> None:
    engine, config = engine_config
    handler = make_plain_handler(engine, config, limits)
    out = handler({"id": "p", "input": {"text": "Hi.", "ref_audio": ref_b64, "ref_text": "Ref.",
                                        "nfe_step": 2, "stream": True}})
    assert isinstance(out, dict) and "audio" in out


def test_ref_text_cache_is_a_bounded_lru() -> None:
    from worker.jobs.tasks import RefTextCache, RefTranscript

    cache = RefTextCache(2)
    cache.put("a", RefTranscript("A", "en"))
    cache.put("b", RefTranscript("B", "en"))
    assert cache.get("a").text == "A"  # a is now the most recent
    cache.put("c", RefTranscript("C", None))
    assert cache.get("b") is None and cache.get("a").text == "A" and cache.get("c").text == "C"
    assert len(cache) == 2 and (cache.hits, cache.misses) == (3, 1)
    off = RefTextCache(0)
    off.put("a", RefTranscript("A", "en"))
    assert off.get("a") is None and len(off) == 0
