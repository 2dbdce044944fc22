"""worker.jobs.runner: a parsed request answered inline or through the front end's upload, and failures
mapped by type and ``where`` (the queue handler's tests run the same core through runpod's shapes)."""

from __future__ import annotations

import base64
import dataclasses

import pytest
from jobkit import audio_bytes, tiny_engine, voice_like

from worker.errors import EngineError, JobInputError
from worker.jobs.runner import Runner, refusal
from worker.jobs.schema import parse_job
from worker.jobs.tasks import JobDeadline
from worker.settings import JobSettings


@pytest.fixture(scope="module")
def engine_config():
    return tiny_engine()


def _request(limits: JobSettings, **fields):
    ref = base64.b64encode(audio_bytes(voice_like(1.0, 24000, seed=5), 24000)).decode()
    job = {"text": "Hello there, this is the runner.", "ref_audio": ref, "ref_text": "A short reference.",
           "nfe_step": 2, "seed": 1, **fields}
    return parse_job(job, limits)


def test_an_answer_over_the_limit_goes_through_the_upload_it_was_given(engine_config, tmp_path) -> None:
    engine, config = engine_config
    limits = JobSettings(voices_dir=tmp_path, bucket_endpoint_url="https://bucket.invalid")
    uploaded: dict[str, bytes] = {}

    def upload(name: str, data: bytes) -> str:
        uploaded[name] = data
        return f"https://bucket.invalid/tts/{name}"

    runner = Runner(engine, config, limits, upload=upload)
    out = runner.answer(_request(limits), "job-7", 2_000, JobDeadline(60))
    assert out["audio_url"] == "https://bucket.invalid/tts/job-7.wav" and "audio" not in out
    assert uploaded["job-7.wav"][:4] == b"RIFF" and len(uploaded["job-7.wav"]) > 2_000
    inline = runner.answer(_request(limits), "job-8", 50_000_000, JobDeadline(60))
    assert base64.b64decode(inline["audio"])[:4] == b"RIFF" and "job-8.wav" not in uploaded


def test_a_bucket_without_an_upload_is_no_bucket(engine_config, tmp_path) -> None:
    # A front end that hands in no upload never promises one: the size is refused before synthesis.
    engine, config = engine_config
    limits = JobSettings(voices_dir=tmp_path, bucket_endpoint_url="https://bucket.invalid")
    runner = Runner(engine, config, dataclasses.replace(limits, max_response_bytes=2_000))
    out = runner.failure(_raises(lambda: runner.answer(_request(limits), "j", 2_000, JobDeadline(60))), "j")
    assert out["error"].startswith("output: ")


def test_failures_by_type_and_where(engine_config, tmp_path) -> None:
    engine, config = engine_config
    calls: list[int] = []
    runner = Runner(engine, config, JobSettings(voices_dir=tmp_path), on_fatal=lambda: calls.append(1))
    refused = runner.failure(JobInputError.collected([("input.text", "is required")]), "j")
    assert refused == {"error": "input.text: is required"}
    # The engine names its argument; a job field is said as the job's input field, a stage as it is.
    assert refusal(EngineError("language", "no alignment model")) == "input.language: no alignment model"
    assert refusal(EngineError("ref_text", "empty")) == "input.ref_text: empty"
    assert refusal(EngineError("planning", "nothing to say")) == "planning: nothing to say"
    fatal = runner.failure(RuntimeError("CUDA error: an illegal memory access was encountered"), "j")
    assert fatal["refresh_worker"] is True and calls == [1]
    other = runner.failure(KeyError("boom"), "j")
    assert other["error"].startswith("internal error (KeyError") and "refresh_worker" not in other


def _raises(call) -> BaseException:
    try:
        call()
    except Exception as err:  # the runner's caller catches everything; so does this helper
        return err
    raise AssertionError("expected a failure")
