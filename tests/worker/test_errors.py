"""The worker's one exception root: what each error says, and how the handler answers it by its type
and its ``where`` (never by reading its message)."""

from __future__ import annotations

import pytest

from worker import errors
from worker.jobs.runner import refusal


def test_an_error_names_where_and_why() -> None:
    err = errors.AudioError("input.ref_audio", "the audio has no samples")
    assert str(err) == "input.ref_audio: the audio has no samples"
    assert (err.where, err.why, err.fields) == ("input.ref_audio", "the audio has no samples",
                                                ["input.ref_audio"])


def test_a_variable_is_quoted_with_its_value() -> None:
    err = errors.SettingsError("WORKER_DEVICE", "must be one of auto, cuda, cpu", value="tpu")
    assert str(err) == "WORKER_DEVICE='tpu' must be one of auto, cuda, cpu"


def test_a_validation_reports_every_issue_at_once() -> None:
    err = errors.JobInputError.collected([("input.text", "is required"),
                                          errors.Issue("input.speed", "must be from 0.25 to 4", 9)])
    assert isinstance(err, errors.JobInputError)
    assert err.fields == ["input.text", "input.speed"]
    assert str(err) == "input.text: is required; input.speed=9 must be from 0.25 to 4"


@pytest.mark.parametrize("cls", [errors.JobInputError, errors.AudioError, errors.VoiceError,
                                 errors.UrlFetchError, errors.JobTimeout, errors.DeliveryError])
def test_every_job_error_shares_the_root(cls: type[errors.WorkerError]) -> None:
    assert issubclass(cls, errors.JobError) and issubclass(cls, errors.WorkerError)


def test_the_handler_places_engine_arguments_under_input() -> None:
    # The engine names its own arguments; the ones that are job fields are the job's input.<field>.
    assert refusal(errors.EngineError("language", "'xx' is not a Whisper language code")) == \
        "input.language: 'xx' is not a Whisper language code"
    assert refusal(errors.EngineError("ref_text", "empty")) == "input.ref_text: empty"
    # ...and what is no job field stays as the engine named it.
    assert refusal(errors.EngineError("frames", "too many")) == "frames: too many"
    # Job-layer errors already name the job's field: passed through as they are.
    voice = errors.VoiceError("input.voice", "no preset named 'x'")
    assert refusal(voice) == "input.voice: no preset named 'x'"
