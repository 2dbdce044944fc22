"""worker.jobs.tasks through the real handler on the tiny engine: the per-job deadline stops work wherever it
is and names WORKER_JOB_TIMEOUT_S, a WAV answer that cannot fit the response limit is refused before
synthesis, and the worker's own MP3 output comes back in as transcription input."""

from __future__ import annotations

import dataclasses
import json

import pytest
from jobkit import audio_bytes, b64, tiny_engine, voice_like

from worker.queue.handler import Handler
from worker.settings import JobSettings, SettingsError

TEXT = " ".join(f"Sentence number {i} is here to make the job long." for i in range(20))


@pytest.fixture(scope="module")
def engine_config():
    return tiny_engine()


@pytest.fixture(scope="module")
def ref() -> str:
    return b64(audio_bytes(voice_like(1.0, 16000, seed=1), 16000))


def _core(engine_config, **limits) -> Handler:
    engine, config = engine_config
    return Handler(engine, config, JobSettings(voices_dir=config.volume / "voices", **limits))


def _good_job(core: Handler, ref: str) -> None:
    out = core.run({"id": "after", "input": {"text": "Still here.", "ref_audio": ref, "ref_text": "Ref.",
                                             "nfe_step": 2}})
    assert "audio" in out, out


def _counting_synthesis(monkeypatch, engine) -> list[int]:
    calls: list[int] = []
    real = engine.synthesize

    def counted(*args, **kw):
        calls.append(1)
        return real(*args, **kw)

    monkeypatch.setattr(engine, "synthesize", counted)
    return calls


def test_the_job_deadline_stops_synthesis_and_names_its_variable(engine_config, ref: str) -> None:
    core = _core(engine_config, job_timeout_s=0.3)
    job = {"text": TEXT, "ref_audio": ref, "ref_text": "A short reference.", "nfe_step": 128}
    streamed = core.stream({"id": "slow", "input": {**job, "stream": True}})
    for out in (core.run({"id": "slow", "input": job}), *streamed):
        if "audio" in out:  # a streamed chunk made before the deadline
            continue
        assert out == {"error": "job: ran past its deadline of 0.3 s (WORKER_JOB_TIMEOUT_S) while "
                                "synthesizing; send shorter text, a lower nfe_step or a shorter reference, "
                                "or raise WORKER_JOB_TIMEOUT_S"}, out
    _good_job(_core(engine_config), ref)


def test_the_deadline_also_bounds_transcription(engine_config, ref: str) -> None:
    core = _core(engine_config, job_timeout_s=1e-6)
    out = core.run({"id": "t", "input": {"task": "transcribe", "audio": ref}})
    assert out["error"].startswith("job: ran past its deadline of 1e-06 s (WORKER_JOB_TIMEOUT_S) while "), out


def test_the_job_timeout_variable(monkeypatch) -> None:
    assert JobSettings.from_env({}).job_timeout_s == 300
    assert JobSettings.from_env({"WORKER_JOB_TIMEOUT_S": "42.5"}).job_timeout_s == 42.5
    with pytest.raises(SettingsError, match="WORKER_JOB_TIMEOUT_S='0' must be at least 1"):
        JobSettings.from_env({"WORKER_JOB_TIMEOUT_S": "0"})


def test_a_wav_answer_too_large_for_the_limit_is_refused_before_synthesis(engine_config, ref: str,
                                                                           monkeypatch) -> None:
    engine, _ = engine_config
    core = _core(engine_config, max_response_bytes=200_000)
    calls = _counting_synthesis(monkeypatch, engine)
    out = core.run({"id": "big", "input": {"text": TEXT, "ref_audio": ref, "ref_text": "A short reference.",
                                           "nfe_step": 128}})
    assert out["error"].startswith("output: the response would be "), out
    assert "over the limit of 200000 bytes" in out["error"] and "BUCKET_ENDPOINT_URL" in out["error"]
    assert not calls  # nothing was synthesized
    # The same text as mp3 (size unknown before encoding), or with a bucket, is not refused up front.
    small = core.run({"id": "mp3", "input": {"text": "Hello there.", "ref_audio": ref, "ref_text": "Ref.",
                                             "nfe_step": 2, "format": "mp3"}})
    assert "audio" in small and calls


def test_the_estimate_never_refuses_an_answer_that_fits(engine_config, ref: str) -> None:
    # The estimate is a lower bound: at a limit just above the real size the job succeeds.
    core = _core(engine_config)
    job = {"text": "One sentence. And another one.", "ref_audio": ref, "ref_text": "A short reference.",
           "nfe_step": 2, "seed": 4}
    out = core.run({"id": "fit", "input": job})
    # What the handler measures (base64 audio + the JSON of the rest), with room for timings digits.
    exact = len(json.dumps(out)) + 32
    tight = Handler(core.jobs.engine, engine_config[1],
                    dataclasses.replace(core.limits, max_response_bytes=exact))
    assert "audio" in tight.run({"id": "fit", "input": job})


def test_the_workers_own_mp3_comes_back_as_transcription_input(engine_config, ref: str) -> None:
    core = _core(engine_config)
    out = core.run({"id": "mp3", "input": {"text": "Hello there.", "ref_audio": ref, "ref_text": "Ref.",
                                           "nfe_step": 2, "format": "mp3", "seed": 2}})
    assert out["audio"].startswith("//"), out["audio"][:8]  # an MP3 frame sync, no ID3 tag
    back = core.run({"id": "asr", "input": {"task": "transcribe", "audio": out["audio"]}})
    assert "error" not in back and abs(back["duration"] - out["duration"]) < 0.2, back
    again = core.run({"id": "clone", "input": {"text": "Again.", "ref_audio": out["audio"], "ref_text": "Hi.",
                                               "nfe_step": 2}})
    assert "audio" in again, again
