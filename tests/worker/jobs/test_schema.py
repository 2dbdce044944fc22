"""Job input validation: typed requests, every issue collected, each naming its field."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.jobs.schema import (
    JobInputError,
    TranscribeRequest,
    TtsRequest,
    VoicesRequest,
    accepted_fields,
    parse_job,
)
from worker.settings import JobSettings, SettingsError

LIMITS = JobSettings(max_text_chars=100)


def issues(job_input: object) -> list[str]:
    with pytest.raises(JobInputError) as caught:
        parse_job(job_input, LIMITS)
    assert str(caught.value) == "; ".join(caught.value.issues)
    return caught.value.issues


def test_tts_defaults() -> None:
    request = parse_job({"text": "Hello there.", "ref_audio": "UklGRg=="}, LIMITS)
    assert request == TtsRequest(text="Hello there.", ref_audio="UklGRg==")
    assert (request.speed, request.nfe_step, request.cfg_strength, request.sway_sampling_coef) == (
        1.0, 32, 2.0, -1.0)
    assert request.format == "wav" and request.seed is None and not request.stream


def test_tts_all_fields() -> None:
    request = parse_job({
        "task": "TTS", "text": "Hi.", "voice": "alice_01", "ref_text": "Some words.", "language": "en",
        "speed": 1.5, "nfe_step": 16.0, "cfg_strength": 0, "sway_sampling_coef": 0.5, "seed": 42,
        "format": "MP3", "sample_rate": 16000, "timestamps": True, "subtitles": "vtt", "stream": True,
    }, LIMITS)
    assert isinstance(request, TtsRequest)
    assert request.voice == "alice_01" and request.ref_audio is None
    assert request.nfe_step == 16 and isinstance(request.nfe_step, int)
    assert request.format == "mp3" and request.subtitles == "vtt" and request.sample_rate == 16000
    assert request.seed == 42 and request.stream and request.timestamps


def test_other_tasks() -> None:
    assert parse_job({"task": "voices"}, LIMITS) == VoicesRequest()
    job = {"task": "transcribe", "audio": "https://example.org/a.wav", "language": "de"}
    request = parse_job(job, LIMITS)
    assert request == TranscribeRequest(audio="https://example.org/a.wav", language="de")
    assert request.timestamps is True


def test_typo_is_refused_with_a_suggestion_and_the_accepted_list() -> None:
    found = issues({"txt": "Hello", "ref_audio": "UklGRg=="})
    assert any(i.startswith("input.txt: unknown field") and "Did you mean 'text'?" in i for i in found)
    assert any("Accepted: task, text, ref_audio" in i for i in found)
    assert any(i.startswith("input.text: is required") for i in found)


def test_every_issue_is_collected() -> None:
    found = issues({"text": "", "ref_audio": 5, "speed": "fast", "nfe_step": 2.5, "seed": -1,
                    "format": "aac", "subtitles": "ass", "timestamps": "yes", "cfg_strength": float("nan"),
                    "sample_rate": 12345, "stream": 1, "language": "English"})
    fields = {i.split(":")[0] for i in found}
    assert fields >= {"input.text", "input.ref_audio", "input.speed", "input.nfe_step", "input.seed",
                      "input.format", "input.subtitles", "input.timestamps", "input.cfg_strength",
                      "input.sample_rate", "input.stream", "input.language"}


@pytest.mark.parametrize(("field", "value", "why"), [
    ("speed", 0.1, "must be from 0.25 to 4"),
    ("speed", True, "must be a number"),
    ("nfe_step", 0, "must be from 1 to 128"),
    ("nfe_step", 1000, "must be from 1 to 128"),
    ("seed", 2**32, "must be from 0 to 4294967295"),
    ("sway_sampling_coef", -2, "must be from -1 to 1"),
    ("format", "opus", "must be one of wav, flac, mp3, ogg"),
    ("voice", "../etc/passwd", "must be a preset name"),
    ("voice", "a/b", "must be a preset name"),
])
def test_bad_values_name_field_and_reason(field: str, value: object, why: str) -> None:
    job = {"text": "Hi.", "ref_audio": "UklGRg==", field: value}
    if field == "voice":
        del job["ref_audio"]
    found = issues(job)
    assert any(i.startswith(f"input.{field}: ") and why in i for i in found), found


def test_reference_must_be_exactly_one_source() -> None:
    both = issues({"text": "a", "ref_audio": "x", "voice": "v"})
    assert any("either ref_audio or voice" in i for i in both)
    assert any(i.startswith("input.ref_audio: is required") for i in issues({"text": "a"}))


def test_text_limit() -> None:
    found = issues({"text": "x" * 101, "ref_audio": "UklGRg=="})
    assert found == ["input.text: is 101 characters; the limit is 100"]


def test_non_object_inputs() -> None:
    for value in (None, "text", [1, 2], 3):
        assert issues(value)[0].startswith("input: must be a JSON object")
    assert issues({"task": "sing"})[0].startswith("input.task: must be one of tts, transcribe, voices")
    extra = issues({"task": "voices", "text": "x"})
    assert extra[0].startswith("input.text: unknown field for task 'voices'")


def test_accepted_fields_cover_the_contract() -> None:
    contract = {"text", "ref_audio", "voice", "ref_text", "speed", "nfe_step", "seed", "format", "timestamps",
                "subtitles", "stream", "cfg_strength", "sway_sampling_coef"}
    assert contract <= set(accepted_fields("tts"))
    assert {"audio", "language", "timestamps"} <= set(accepted_fields("transcribe"))


def test_limits_from_env(tmp_path) -> None:
    limits = JobSettings.from_env({"WORKER_MAX_TEXT_CHARS": "12", "WORKER_ALLOW_PRIVATE_URLS": "1",
                                 "BUCKET_ENDPOINT_URL": "http://127.0.0.1:9"}, volume=tmp_path)
    assert limits.max_text_chars == 12 and limits.allow_private_urls and limits.s3_configured
    assert limits.voices_dir == tmp_path / "voices"
    assert JobSettings.from_env({}).allow_private_urls is False
    with pytest.raises(SettingsError, match="WORKER_URL_TIMEOUT_S='soon' is not a number"):
        JobSettings.from_env({"WORKER_URL_TIMEOUT_S": "soon"})
    with pytest.raises(SettingsError, match="WORKER_MAX_TEXT_CHARS='0' must be at least 1"):
        JobSettings.from_env({"WORKER_MAX_TEXT_CHARS": "0"})


# Any code point, lone surrogates (which JSON parsers hand over for "\ud800") far more often than a
# uniform draw would give them.
any_text = st.text(st.one_of(st.characters(exclude_categories=()),
                             st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)), max_size=30)
STRING_FIELDS = {"tts": ("text", "ref_audio", "voice", "ref_text", "language", "format", "subtitles", "task"),
                 "transcribe": ("audio", "language", "subtitles")}


def _encodable(value: object) -> bool:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return False
    return True


@settings(max_examples=300)
@given(task=st.sampled_from(["tts", "transcribe"]), values=st.dictionaries(
    st.sampled_from(sorted(set(STRING_FIELDS["tts"]) | set(STRING_FIELDS["transcribe"]))), any_text))
def test_every_string_field_is_valid_unicode_or_refused_by_name(task: str, values: dict) -> None:
    job = {"text": "Hi.", "ref_audio": "UklGRg==", "audio": "UklGRg==", **values, "task": task}
    job = {k: v for k, v in job.items() if k in accepted_fields(task)}
    try:
        request = parse_job(job, LIMITS)
    except JobInputError as err:
        for name, value in job.items():
            if not _encodable(value) and name != "task":
                assert any(i.startswith(f"input.{name}: ") for i in err.issues), (name, err.issues)
        str(err).encode("utf-8")  # the message itself always encodes
        return
    for name in STRING_FIELDS[task]:
        assert _encodable(getattr(request, name, None)), name


def test_a_lone_surrogate_in_text_is_named() -> None:
    found = issues({"text": "Hi \ud800 there.", "ref_audio": "UklGRg==", "ref_text": "ok \udfff"})
    assert found == [
        "input.text: holds a lone surrogate (U+D800 at character 3), which is not valid Unicode; send "
        "UTF-8 text",
        "input.ref_text: holds a lone surrogate (U+DFFF at character 3), which is not valid Unicode; send "
        "UTF-8 text"]


def test_a_deeply_nested_value_is_quoted_briefly() -> None:
    nested: list = []
    for _ in range(50_000):
        nested = [nested]
    found = issues({"text": nested, "ref_audio": "UklGRg==", "speed": {"a": "b" * 10_000}})
    assert all(len(issue) < 200 for issue in found), found
