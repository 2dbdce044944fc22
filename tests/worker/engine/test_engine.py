"""The Engine on the tiny generated models: real F5-TTS, Vocos, CTranslate2 Whisper and wav2vec2 code."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from devtools.tiny import tiny_config
from worker.engine import tts, tts_text
from worker.engine.core import Engine, EngineError, SynthesisParams, Transcript, Word

TINY_CACHE = Path(__file__).resolve().parents[3] / ".cache" / "tiny-models"
REF_TEXT = "This is the reference voice."


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine.load(tiny_config(TINY_CACHE))


def _ref(seconds: float, seed: int = 0) -> np.ndarray:
    wave = np.random.default_rng(seed).standard_normal(int(seconds * 24_000)).astype(np.float32)
    return 0.1 * wave


def _say(engine: Engine, text: str, ref: np.ndarray, ref_text: str = REF_TEXT, **kw) -> list[np.ndarray]:
    return list(engine.synthesize(text, ref, ref_text, SynthesisParams(nfe_step=4, **kw)))


def _words_ok(words: tuple[Word, ...], seconds: float) -> None:
    last = 0.0
    for w in words:
        assert isinstance(w.word, str) and w.word.strip()
        assert 0.0 <= w.start <= w.end <= seconds + 1e-6
        assert w.start >= last
        last = w.start


def test_engine_reports_its_rates_and_device(engine):
    assert (engine.sample_rate, engine.asr_sample_rate, engine.device) == (24_000, 16_000, "cpu")


def test_warmup_runs_every_model(engine):
    engine.warmup()


def test_synthesis_length_follows_upstream_duration_rule(engine):
    ref = _ref(2.0)
    text = "Hello world, this is a test."
    audio = np.concatenate(_say(engine, text, ref, seed=1))
    assert audio.dtype == np.float32 and audio.ndim == 1 and np.isfinite(audio).all()
    ref_frames = len(ref) // 256
    ref_bytes = len((REF_TEXT + "  ").encode())  # normalised "... voice. " plus upstream's joining space
    frames = ref_frames + int(ref_frames / ref_bytes * len(text.encode()))
    # Vocos' centered inverse STFT turns n mel frames into (n - 1) hops of samples.
    assert len(audio) == (frames - ref_frames - 1) * 256


def test_speed_scales_length(engine):
    ref = _ref(2.0)
    slow = np.concatenate(_say(engine, "Hello world, this is a test.", ref, seed=1, speed=0.5))
    fast = np.concatenate(_say(engine, "Hello world, this is a test.", ref, seed=1, speed=2.0))
    assert len(slow) > 3 * len(fast)


def test_same_seed_same_audio_other_seed_other_audio(engine):
    ref = _ref(1.5, seed=2)
    a = np.concatenate(_say(engine, "Same words again.", ref, seed=42))
    b = np.concatenate(_say(engine, "Same words again.", ref, seed=42))
    c = np.concatenate(_say(engine, "Same words again.", ref, seed=43))
    np.testing.assert_array_equal(a, b)
    assert a.shape == c.shape and not np.array_equal(a, c)


def test_stream_chunks_concatenate_to_the_cross_faded_join(engine):
    # Long reference + short transcript: upstream's batch budget is small, so this text is 3 batches.
    ref, ref_text = _ref(6.0, seed=3), "Hello there."
    text = "First sentence is here. Second one follows it. And a third, to be sure."
    faded = _say(engine, text, ref, ref_text, seed=5)
    raw = _say(engine, text, ref, ref_text, seed=5, cross_fade_s=0.0)
    assert len(raw) == 3 and len(faded) == 3
    want = tts_text.cross_fade_concat(raw, int(0.15 * 24_000))
    np.testing.assert_allclose(np.concatenate(faded), want, rtol=0, atol=1e-6)
    # Every chunk but the last holds back the fade tail, which the next chunk carries blended.
    assert len(faded[0]) == len(raw[0]) - int(0.15 * 24_000)


@settings(max_examples=200, deadline=None)
@given(lengths=st.lists(st.integers(0, 50), min_size=1, max_size=6), fade=st.integers(0, 20))
def test_cross_fader_streams_exactly_the_reference_join(lengths, fade):
    rng = np.random.default_rng(sum(lengths) + fade)
    waves = [rng.standard_normal(n).astype(np.float32) for n in lengths]
    fader = tts_text.CrossFader(fade)
    streamed = [fader.push(w, last=i == len(waves) - 1) for i, w in enumerate(waves)]
    np.testing.assert_allclose(np.concatenate(streamed), tts_text.cross_fade_concat(waves, fade), atol=1e-6)


def test_first_chunk_limit_makes_a_short_first_batch(tmp_path):
    synth_plan = tts.F5Synth.plan.__get__(type("S", (), {"first_chunk_chars": 20})())
    batches = synth_plan("One two three. Four five six seven eight nine ten.", "Ref. ", 2.0, 1.0, 0)
    assert batches[0].gen_text == "One two three."
    assert " ".join(b.gen_text for b in batches) == "One two three. Four five six seven eight nine ten."
    assert [b.seed for b in batches] == list(range(len(batches)))


def test_first_chunk_chars_per_request_splits_only_that_request(engine):
    ref, text = _ref(2.0, seed=7), "One two three four. Five six seven eight nine ten eleven."
    whole = _say(engine, text, ref, seed=3)
    quick = _say(engine, text, ref, seed=3, first_chunk_chars=20)
    assert len(whole) == 1 and len(quick) == 2
    assert len(quick[0]) < len(whole[0]) / 2
    assert len(_say(engine, text, ref, seed=3)) == 1  # the engine's default is untouched


def test_bad_synthesis_inputs_name_the_field(engine):
    ref = _ref(1.0)
    cases = [
        (("", ref, REF_TEXT), "text"),
        (("Hi there.", ref, "  "), "ref_text"),
        (("Hi there.", np.zeros((2, 100), np.float32), REF_TEXT), "ref_audio"),
        (("Hi there.", np.full(1000, np.nan, np.float32), REF_TEXT), "ref_audio"),
        (("Hi there.", np.zeros(10, np.float32), REF_TEXT), "ref_audio"),
        (("Hi there.", _ref(25.0), REF_TEXT), "ref_audio"),
    ]
    for args, field in cases:
        with pytest.raises(EngineError, match=field):
            list(engine.synthesize(*args, SynthesisParams(nfe_step=2)))
    with pytest.raises(EngineError, match="nfe_step"):
        list(engine.synthesize("Hi there.", ref, REF_TEXT, SynthesisParams(nfe_step=0)))
    with pytest.raises(EngineError, match="speed"):
        list(engine.synthesize("Hi there.", ref, REF_TEXT, SynthesisParams(speed=0)))


def test_transcribe_returns_a_well_formed_transcript(engine):
    audio = np.concatenate(_say(engine, "Some words to hear.", _ref(1.0), seed=9))
    speech = audio[::3].copy()  # 24 kHz -> 16 kHz is exactly every third sample for this test
    seconds = len(speech) / 16_000
    tr = engine.transcribe(speech, language="en")
    assert isinstance(tr, Transcript) and tr.language == "en"
    assert tr.segments and tr.text
    for seg in tr.segments:
        assert 0.0 <= seg.start <= seg.end <= seconds + 1e-6
        _words_ok(seg.words, seconds)
    assert tr.words == tuple(w for s in tr.segments for w in s.words)
    _words_ok(tr.words, seconds)
    untimed = engine.transcribe(speech, language="en", word_timestamps=False)
    assert untimed.text == tr.text and untimed.words == ()


def test_transcribe_rejects_an_unknown_language(engine):
    with pytest.raises(EngineError, match="language"):
        engine.transcribe(_ref(1.0)[::3].copy(), language="klingon")


def test_transcribe_detects_a_language(engine):
    tr = engine.transcribe(_ref(1.0, seed=4)[::3].copy())
    assert isinstance(tr.language, str) and tr.language


def test_align_known_text_gives_monotonic_words_inside_the_audio(engine):
    speech = _ref(3.0, seed=6)[::3].copy()
    words = engine.align(speech, "the quick brown fox jumps over the lazy dog", "en")
    assert [w.word for w in words] == "the quick brown fox jumps over the lazy dog".split()
    _words_ok(words, 3.0)


def test_align_rejects_unknown_language_and_empty_text(engine):
    speech = _ref(1.0)[::3].copy()
    with pytest.raises(EngineError, match="language"):
        engine.align(speech, "hello", "xx")
    with pytest.raises(EngineError, match="text"):
        engine.align(speech, " ", "en")
    with pytest.raises(EngineError, match="audio"):
        engine.align(np.zeros(0, np.float32), "hello", "en")


@pytest.mark.slow
def test_pyannote_vad_finds_the_speech_in_a_real_recording():
    """The production VAD (pyannote, weights shipped inside the whisperx wheel) on real speech: the
    English example clip shipped inside the f5_tts wheel, transcribed by the tiny ASR model."""
    from importlib.resources import files

    import soundfile as sf

    clip = files("f5_tts").joinpath("infer/examples/basic/basic_ref_en.wav")
    audio, rate = sf.read(str(clip), dtype="float32")
    assert rate == 24_000
    speech = engine_resample(audio)
    seconds = len(speech) / 16_000
    eng = Engine.load(tiny_config(TINY_CACHE, whisper_vad="pyannote"))
    tr = eng.transcribe(speech, language="en")
    assert tr.segments, "pyannote found no speech in a real recording"
    for seg in tr.segments:
        assert 0.0 <= seg.start < seg.end <= seconds + 1e-6
    _words_ok(tr.words, seconds)
    # Noise, by contrast, is not speech: pyannote leaves nothing to transcribe.
    assert eng.transcribe(0.01 * _ref(3.0, seed=8)[::3].copy(), language="en").segments == ()


def engine_resample(audio24: np.ndarray) -> np.ndarray:
    from worker.engine.core import _resample

    return _resample(audio24, 24_000, 16_000)


def test_synthesize_checks_inputs_at_call_time_and_leaves_grad_mode_alone(engine):
    import torch

    with pytest.raises(EngineError, match="text"):
        engine.synthesize("", _ref(1.0), REF_TEXT, SynthesisParams())  # raised before any iteration
    stream = engine.synthesize("One. Two.", _ref(1.0), REF_TEXT, SynthesisParams(nfe_step=2, seed=1))
    next(stream)
    assert not torch.is_inference_mode_enabled()  # the consumer's code between chunks is not affected
    list(stream)


class _EagerGraph:
    """The graph path's step, replayed eagerly (no CUDA here): same shared static buffers as a graph."""

    def __init__(self, step, y, pool) -> None:
        self.step = step

    def replay(self) -> None:
        self.step()


def test_concurrent_requests_get_the_same_audio_as_sequential_ones(engine):
    """If the job layer ever runs jobs concurrently, shared model state (here the graph path's static
    buffers, replayed eagerly) must not mix requests."""
    from concurrent.futures import ThreadPoolExecutor

    synth = tts.F5Synth(engine.tts.cfm, engine.tts.vocos, "cpu", bucket_frames=64)
    synth.cuda_graphs = True
    synth._graph_factory = _EagerGraph
    ref, ref_text = _ref(6.0, seed=3), "Hello there."
    text = "First sentence is here. Second one follows it. And a third, to be sure."
    seeds = [11, 12, 13]

    def say(seed: int) -> np.ndarray:
        return np.concatenate(list(synth.synthesize(text, ref, ref_text, nfe_step=4, seed=seed)))

    alone = [say(s) for s in seeds]
    speech = alone[0][::3].copy()
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(say, s) for s in seeds]
        words = pool.submit(engine.align, speech, "first sentence is here", "en")
        together = [f.result() for f in futures]
    for a, b in zip(alone, together, strict=True):
        # Float rounding may differ when CPU kernels split work differently across busy threads; mixed-up
        # requests (another seed's noise) would differ by the signal itself.
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-4 * float(np.abs(a).max()))
    assert not np.allclose(alone[0], alone[1], atol=1e-2 * float(np.abs(alone[0]).max()))
    assert [w.word for w in words.result()] == ["first", "sentence", "is", "here"]
