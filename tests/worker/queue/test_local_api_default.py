"""`just serve PORT` with the default handler (the plain one, WORKER_STREAMING unset) on runpod's real
local API: a paragraph of narration in the default format (WAV) comes back inline as the documented
dict, where the streaming handler's 1 MB item cap refused it (issue 12's report: "the response would be
3376593 bytes, over the limit of 1000000 bytes")."""

from __future__ import annotations

import pytest
from jobkit import decode_b64
from test_local_api import REF, devserve, post

pytestmark = pytest.mark.slow

# ~500 characters of narration: ~35 s of speech with this reference, ~3.4 MB of base64 WAV.
SENTENCE = "The river ran quiet under the old stone bridge, and the town woke slowly around it."
PARAGRAPH = " ".join([SENTENCE] * 6)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with devserve(tmp_path_factory, WORKER_STREAMING="") as base:
        yield base


def test_a_paragraph_comes_back_inline_as_the_documented_dict(server: str) -> None:
    status, body = post(server, "/runsync", {"input": {"text": PARAGRAPH, "ref_audio": REF, "seed": 3,
                                                       "ref_text": "A short reference.", "nfe_step": 2}})
    assert status == 200 and body["status"] == "COMPLETED", str(body)[:500]
    out = body["output"]
    assert isinstance(out, dict) and out["format"] == "wav"  # the dict itself, not a one-item list
    assert len(out["audio"]) > 1_000_000  # past the streaming handler's item cap
    samples, rate = decode_b64(out["audio"])
    assert abs(len(samples) / rate - out["duration"]) < 0.01 and out["duration"] > 20


def test_stream_true_under_the_default_handler_returns_the_whole_output(server: str) -> None:
    status, body = post(server, "/runsync", {"input": {"text": "One. Two.", "ref_audio": REF,
                                                       "ref_text": "Ref.", "nfe_step": 2, "stream": True}})
    assert status == 200 and isinstance(body["output"], dict) and "audio" in body["output"], str(body)[:300]
