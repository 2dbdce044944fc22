"""Property-based fuzzing of job inputs against the real handler on the tiny engine: every input gives
either a valid output or an ``error`` that names a field, never an exception, and the handler keeps
working afterwards."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jobkit import audio_bytes, b64, tiny_engine, voice_like

from worker.jobs.schema import accepted_fields
from worker.queue.handler import Handler
from worker.settings import JobSettings

REF = b64(audio_bytes(voice_like(0.6, 16000, seed=5), 16000))
FIELDS = sorted(set(accepted_fields("tts")) | set(accepted_fields("transcribe")))

json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**40, 2**40),
                         st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12))
json_values = st.recursive(json_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)), max_leaves=6)

# Values near the valid ones, so that many examples pass validation and reach the engine.
plausible = {
    "task": st.sampled_from(["tts", "transcribe", "voices", "TTS", "sing", ""]),
    "text": st.one_of(st.text(min_size=1, max_size=40), st.sampled_from(["Hi.", "Hello there. Bye!", " "])),
    "ref_audio": st.sampled_from([REF, "data:audio/wav;base64," + REF, "bm90IGF1ZGlv", "", "/etc/passwd",
                                  "file:///etc/passwd", "http://127.0.0.1:9/x.wav", REF[:100]]),
    "audio": st.sampled_from([REF, "bm90IGF1ZGlv", "ftp://x/y"]),
    "voice": st.sampled_from(["alice", "../alice", "nobody", "", "a" * 70]),
    "ref_text": st.one_of(st.none(), st.text(max_size=20)),
    "language": st.sampled_from(["en", "xx", "EN", "english", "", None]),
    "speed": st.one_of(st.floats(0, 5), st.integers(-1, 5)),
    "nfe_step": st.one_of(st.integers(-1, 3), st.floats(1, 3)),
    "cfg_strength": st.floats(-1, 11),
    "sway_sampling_coef": st.floats(-2, 2),
    "seed": st.one_of(st.none(), st.integers(-5, 2**33)),
    "format": st.sampled_from(["wav", "mp3", "flac", "ogg", "aac", "WAV"]),
    "sample_rate": st.sampled_from([8000, 16000, 24000, 12345, "24000"]),
    "timestamps": st.one_of(st.booleans(), st.just("yes")),
    "subtitles": st.sampled_from(["srt", "vtt", "ass", None]),
    "stream": st.booleans(),
}
job_inputs = st.one_of(
    json_values,
    st.fixed_dictionaries({}, optional={k: st.one_of(v, json_values) for k, v in plausible.items()}),
    st.fixed_dictionaries({"text": plausible["text"], "ref_audio": st.just(REF), "nfe_step": st.just(2)},
                          optional={k: plausible[k] for k in ("speed", "seed", "format", "subtitles",
                                                              "timestamps", "ref_text")}),
    st.dictionaries(st.text(max_size=8), json_values, max_size=4),
)


@pytest.fixture(scope="module")
def core(tmp_path_factory) -> Handler:
    engine, config = tiny_engine()
    voices = tmp_path_factory.mktemp("voices")
    (voices / "alice.wav").write_bytes(audio_bytes(voice_like(0.5, 24000), 24000))
    (voices / "alice.txt").write_text("Alice.")
    return Handler(engine, config, JobSettings(voices_dir=voices, max_text_chars=200, url_timeout_s=1.0))


def check(output: object) -> None:
    assert isinstance(output, dict)
    json.dumps(output, allow_nan=False)  # what runpod sends must be strict JSON
    if "error" in output:
        assert set(output) == {"error"}, output
        message = output["error"]
        assert message.startswith(("input", "output:")), message
    else:
        assert {"audio", "voices", "text", "done"} & set(output), output


@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(job_input=job_inputs)
def test_any_input_gives_an_output_or_a_named_error(core: Handler, job_input: object) -> None:
    check(core.run({"id": "fuzz", "input": job_input}))
    for item in core.stream({"id": "fuzz", "input": job_input}):
        check(item)


def test_still_serving_after_fuzzing(core: Handler) -> None:
    out = core.run({"id": "after", "input": {"text": "Still here.", "ref_audio": REF, "ref_text": "Ref.",
                                             "nfe_step": 2}})
    assert "audio" in out


# Any code point, lone surrogates and control characters far more often than a uniform draw gives them.
_odd = st.one_of(st.characters(exclude_categories=()),
                 st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), st.characters(max_codepoint=0x1F))
any_text = st.one_of(st.text(_odd, min_size=1, max_size=24),
                     st.builds(lambda a, odd, b: a + odd + b, st.text(max_size=12), _odd,
                               st.text(max_size=12)))
STRING_FIELDS = ("text", "ref_text", "voice", "language", "format", "subtitles", "task")


@settings(max_examples=40, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(fields=st.dictionaries(st.sampled_from(STRING_FIELDS), any_text, min_size=1, max_size=2),
       keys=st.dictionaries(any_text, st.just(1), max_size=1))
def test_strings_of_any_code_points_never_reach_an_encoder_unchecked(core: Handler, fields: dict,
                                                                     keys: dict) -> None:
    # A valid job with one or two string fields (or an extra key) replaced by arbitrary code points.
    job_input = {"text": "Hello there.", "ref_audio": REF, "ref_text": "Ref.", "nfe_step": 2, **fields}
    if "voice" in fields:
        del job_input["ref_audio"]
    if not fields.keys() & {"text", "voice", "format", "task"}:
        job_input.update(keys)
    for output in (core.run({"id": "fuzz", "input": job_input}),
                   *core.stream({"id": "fuzz", "input": job_input})):
        check(output)
        json.dumps(output, ensure_ascii=False).encode("utf-8")  # what runpod sends, as UTF-8
