"""worker.engine.tts text batching on the tiny real F5-TTS: a clause without punctuation, of any length,
at any speed, is split so that every batch fits the model's frame limit (or the job is refused by name before
any work), and the planned length is a lower bound of what synthesis makes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devtools.tiny import tiny_config
from worker.engine import tts_text
from worker.engine.core import Engine, EngineError, SynthesisParams

TINY_CACHE = Path(__file__).resolve().parents[3] / ".cache" / "tiny-models"
# A realistic reference: ~15 bytes of transcript per second, as speech has.
REALISTIC_SECONDS = 10.0
REALISTIC_TEXT = ("So this is what my voice sounds like when I read a few plain sentences aloud at an "
                  "ordinary pace, neither fast nor slow, for ten seconds.")


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine.load(tiny_config(TINY_CACHE))


def _ref(seconds: float, seed: int = 0) -> np.ndarray:
    return (0.1 * np.random.default_rng(seed).standard_normal(int(seconds * 24_000))).astype(np.float32)


words = st.text(st.sampled_from("abcdefghijklmnopqrstuvwxyzéß"), min_size=1, max_size=30)
unpunctuated = st.one_of(
    st.lists(words, min_size=1, max_size=400).map(" ".join),  # words, no punctuation
    st.integers(1, 5000).map(lambda n: "a" * n),  # one endless word
    st.integers(1, 1500).map(lambda n: "你好" * n),  # CJK: no spaces either
    st.lists(st.sampled_from(["a", "bb", "\t", " ", "\n", "ccc", "𝄞"]), min_size=1,
             max_size=2000).map("".join),
)


@settings(max_examples=300, deadline=None)
@given(text=unpunctuated, max_bytes=st.integers(1, 300))
def test_split_oversized_keeps_every_character_within_the_budget(text: str, max_bytes: int) -> None:
    pieces = tts_text.split_oversized(text, max_bytes)
    for piece in pieces:
        assert piece and piece == piece.strip()
        assert len(piece.encode()) <= max_bytes or len(piece) == 1, (piece, max_bytes)
    assert "".join("".join(p.split()) for p in pieces) == "".join(text.split())


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=unpunctuated, speed=st.floats(0.25, 4.0), ref_seconds=st.floats(0.1, 20.0),
       ref_text=st.text(st.sampled_from("abc xyz"), min_size=1, max_size=400).filter(str.strip))
def test_every_planned_batch_fits_the_frame_limit_or_the_text_is_refused(engine: Engine, text: str,
                                                                          speed: float, ref_seconds: float,
                                                                          ref_text: str) -> None:
    synth = engine.tts
    try:
        prepared = synth.prepare(text, _ref(ref_seconds), ref_text, speed=speed, seed=0)
    except EngineError as err:  # named: a batch that cannot fit, no text at all, too short a reference
        assert str(err).startswith(("text: the piece ", "text: empty", "ref_audio: too short")), err
        return
    for batch in prepared.batches:
        assert synth._batch_frames(prepared, batch, speed) <= synth.max_frames


def test_the_frame_limit_is_the_models_text_position_table(engine: Engine) -> None:
    assert engine.tts.max_frames == engine.tts.dit.text_embed.precompute_max_pos == 8192


@pytest.mark.parametrize(("text", "speed", "ref_seconds", "ref_text"), [
    ("a" * 1300, 1.0, 1.0, "A short reference."),
    (("word " * 60).strip(), 0.25, 1.0, "A short reference."),
    (" ".join(["unpunctuated"] * 25), 0.25, REALISTIC_SECONDS, REALISTIC_TEXT),  # ~300 bytes at 0.25
], ids=["a-times-1300", "words-slow", "realistic-300-bytes-at-0.25"])
def test_the_reported_long_clauses_synthesize(engine: Engine, text: str, speed: float, ref_seconds: float,
                                              ref_text: str) -> None:
    ref = _ref(ref_seconds)
    params = SynthesisParams(nfe_step=1, speed=speed, seed=3)
    planned = engine.planned_seconds(text, ref, ref_text, params)
    audio = np.concatenate(list(engine.synthesize(text, ref, ref_text, params)))
    assert np.isfinite(audio).all()
    assert planned <= len(audio) / 24_000 <= planned + 1.0


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                HealthCheck.too_slow])
@given(length=st.integers(1, 400), speed=st.floats(0.25, 4.0), letter=st.sampled_from("ab你"),
       spaced=st.booleans())
def test_any_unpunctuated_length_and_speed_synthesizes(engine: Engine, length: int, speed: float,
                                                       letter: str, spaced: bool) -> None:
    text = (letter + " ") * length if spaced else letter * length
    ref = _ref(3.0)
    params = SynthesisParams(nfe_step=1, speed=speed, seed=1)
    planned = engine.planned_seconds(text, ref, "A three second reference.", params)
    audio = np.concatenate(list(engine.synthesize(text, ref, "A three second reference.", params)))
    assert np.isfinite(audio).all() and planned <= len(audio) / 24_000


def test_a_batch_that_cannot_fit_is_refused_by_name_before_any_work(engine: Engine) -> None:
    # Every batch carries the reference transcript: one too long for the position table cannot fit.
    calls = []
    real = engine.tts._one_batch

    def spy(*args, **kw):
        calls.append(1)
        return real(*args, **kw)

    engine.tts._one_batch = spy
    try:
        with pytest.raises(EngineError, match=r"^text: the piece 'Hello\.' needs \d+ frames .* past the "
                                              r"model's limit of 8192"):
            engine.synthesize("Hello.", _ref(1.0), "a" * 9000, SynthesisParams(nfe_step=1))
    finally:
        del engine.tts._one_batch
    assert not calls


def test_a_short_first_chunk_cuts_a_long_first_clause(engine: Engine) -> None:
    ref = _ref(2.0)
    prepared = engine.tts.prepare("one two three four five six seven eight nine ten eleven twelve", ref,
                                  "Ref text.", speed=1.0, seed=0, first_chunk_chars=12)
    texts = [b.gen_text for b in prepared.batches]
    assert texts[0] == "one two" and " ".join(texts) == "one two three four five six seven eight nine ten " \
                                                        "eleven twelve"
