"""The worker's synthesis equals upstream f5_tts inference for the same tiny weights, text and seed.

Upstream here is f5_tts 1.1.22's own code: `utils_infer.load_model` / `load_vocoder` read the tiny
checkpoint and vocoder, and `utils_infer.infer_batch_process` (what `infer_process` and `F5TTS.infer`
call) synthesizes, seeded the way `F5TTS.infer` seeds (torch's global RNG). `infer_process` itself is not
called because it reads the reference with torchaudio.load (torchcodec, absent here); the batches it
would pass are computed with upstream's own `chunk_text` and max_chars formula instead.

Tolerance: both run in float32 on CPU. The worker's fast sampler computes the x-independent part of the
input projection once and adds it per step, which reorders float sums (a few ulp per step); after the
ODE steps and the vocoder the difference stays below 1e-4 of the signal's peak. The worker's "upstream"
sampler calls the same `CFM.sample`, so it must match to float rounding.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from devtools.tiny import TINY_DIT, ensure_tiny_models
from worker.engine import tts, tts_load, tts_text

TINY_CACHE = Path(__file__).resolve().parents[3] / ".cache" / "tiny-models"
REF_TEXT = "This is the reference voice."
GEN_TEXT = "Hello world, this is a small test of the engine."


@pytest.fixture(scope="module")
def root() -> Path:
    return ensure_tiny_models(TINY_CACHE)


@pytest.fixture(scope="module")
def upstream(root):
    from f5_tts.infer.utils_infer import load_model, load_vocoder
    from f5_tts.model import DiT

    model = load_model(DiT, dict(TINY_DIT), str(root / "f5" / "model_tiny.safetensors"),
                       vocab_file=str(root / "f5" / "vocab.txt"), device="cpu")
    vocoder = load_vocoder("vocos", is_local=True, local_path=str(root / "vocos"), device="cpu")
    return model, vocoder


def _synth(root, dtype=torch.float32, **kw) -> tts.F5Synth:
    arch = tts_load.load_arch(str(root / "f5" / "arch.json"))
    cfm = tts_load.load_cfm(arch, root / "f5" / "model_tiny.safetensors", root / "f5" / "vocab.txt", "cpu",
                            dtype)
    return tts.F5Synth(cfm, tts_load.load_vocos(root / "vocos", "cpu"), "cpu", **kw)


def _ref(seconds: float, rms: float, seed: int = 0) -> np.ndarray:
    wave = np.random.default_rng(seed).standard_normal(int(seconds * tts.SAMPLE_RATE)).astype(np.float32)
    return (wave * rms / np.sqrt(np.mean(wave**2))).astype(np.float32)


def _upstream_wave(upstream, ref: np.ndarray, ref_text: str, batches: list[str], seed: int, nfe: int):
    from f5_tts.infer.utils_infer import infer_batch_process

    model, vocoder = upstream
    torch.manual_seed(seed)  # what F5TTS.infer's seed_everything does for torch
    wave, sr, _ = next(infer_batch_process(
        (torch.from_numpy(ref).unsqueeze(0), tts.SAMPLE_RATE), ref_text, batches, model, vocoder,
        nfe_step=nfe, cfg_strength=2.0, sway_sampling_coef=-1.0, speed=1.0, device="cpu", progress=None,
    ))
    assert sr == tts.SAMPLE_RATE
    return np.asarray(wave)


def _upstream_batches(ref: np.ndarray, ref_text: str, gen_text: str) -> tuple[str, list[str]]:
    """What upstream's preprocess_ref_audio_text + infer_process hand to infer_batch_process."""
    from f5_tts.infer.utils_infer import chunk_text

    ref_text = ref_text + " " if ref_text.endswith(".") else ref_text + ". "
    secs = len(ref) / tts.SAMPLE_RATE
    max_chars = int(len(ref_text.encode()) / secs * (22 - secs) * 1.0)
    return ref_text, chunk_text(gen_text, max_chars=max_chars)


@pytest.mark.parametrize("rms", [0.2, 0.03], ids=["loud-ref", "quiet-ref-rescaled"])
def test_fast_sampler_equals_upstream_infer(root, upstream, rms):
    ref = _ref(2.0, rms)
    up_ref_text, batches = _upstream_batches(ref, REF_TEXT, GEN_TEXT)
    assert len(batches) == 1
    want = _upstream_wave(upstream, ref, up_ref_text, batches, seed=7, nfe=8)
    got = np.concatenate(list(_synth(root).synthesize(GEN_TEXT, ref, REF_TEXT, nfe_step=8, seed=7)))
    assert got.dtype == np.float32 and got.shape == want.shape
    peak = float(np.abs(want).max())
    assert peak > 0
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * peak)


def test_engine_as_configured_equals_upstream_infer(root, upstream):
    """The whole path a job takes: EngineSettings -> Engine.load (model resolution, loading) -> synthesize."""
    from devtools.tiny import tiny_config
    from worker.engine.core import Engine, SynthesisParams

    engine = Engine.load(tiny_config(TINY_CACHE))
    ref = _ref(2.5, 0.1, seed=21)
    up_ref_text, batches = _upstream_batches(ref, REF_TEXT, GEN_TEXT)
    want = _upstream_wave(upstream, ref, up_ref_text, batches, seed=33, nfe=8)
    params = SynthesisParams(nfe_step=8, seed=33)
    got = np.concatenate(list(engine.synthesize(GEN_TEXT, ref, REF_TEXT, params)))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * float(np.abs(want).max()))


def test_upstream_sampler_matches_upstream_to_rounding(root, upstream):
    ref = _ref(1.5, 0.1, seed=3)
    up_ref_text, batches = _upstream_batches(ref, REF_TEXT, GEN_TEXT)
    want = _upstream_wave(upstream, ref, up_ref_text, batches, seed=11, nfe=6)
    got = np.concatenate(list(_synth(root, sampler="upstream").synthesize(GEN_TEXT, ref, REF_TEXT, nfe_step=6,
                                                                          seed=11)))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6 * float(np.abs(want).max()))


def test_multi_batch_equals_upstream_batches_cross_faded(root, upstream):
    """Several batches: each equals upstream's single-batch result for that batch's seed, and the stream
    joins them exactly as upstream's cross-fade does (upstream's own multi-batch call draws noise from
    one global RNG in thread-race order, so it cannot be reproduced batch by batch)."""
    # A long reference with a short transcript makes upstream's batch budget small: three batches.
    ref, ref_text = _ref(6.0, 0.1, seed=5), "Hello there."
    text = "First sentence is here. Second one follows it. And a third, to be sure."
    synth = _synth(root)
    plan = synth.plan(text, tts_text.normalize_ref_text(ref_text), 6.0, 1.0, 100)
    up_ref_text, up_batches = _upstream_batches(ref, ref_text, text)
    assert [b.gen_text for b in plan] == up_batches and len(plan) == 3
    waves = [_upstream_wave(upstream, ref, up_ref_text, [b.gen_text], seed=b.seed, nfe=4) for b in plan]
    got = np.concatenate(list(synth.synthesize(text, ref, ref_text, nfe_step=4, seed=100)))
    want = tts_text.cross_fade_concat(waves, int(0.15 * tts.SAMPLE_RATE))
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * float(np.abs(want).max()))


def test_padded_bucket_path_equals_plain_path(root):
    """The CUDA path's padding (masked attention and conv, per-bucket lengths) leaves the audio unchanged;
    checked here on CPU with the same code, minus the graph capture."""
    ref = _ref(1.0, 0.1, seed=9)
    plain = np.concatenate(list(_synth(root).synthesize(GEN_TEXT, ref, REF_TEXT, nfe_step=6, seed=2)))
    padded_synth = _synth(root, bucket_frames=64)
    padded = np.concatenate(list(padded_synth.synthesize(GEN_TEXT, ref, REF_TEXT, nfe_step=6, seed=2)))
    assert padded.shape == plain.shape
    np.testing.assert_allclose(padded, plain, rtol=0, atol=1e-4 * float(np.abs(plain).max()))


def test_no_guidance_path_equals_upstream_sampler(root):
    ref = _ref(1.0, 0.1, seed=4)
    kw = {"nfe_step": 5, "seed": 3, "cfg_strength": 0.0}
    fast = np.concatenate(list(_synth(root).synthesize(GEN_TEXT, ref, REF_TEXT, **kw)))
    up = np.concatenate(list(_synth(root, sampler="upstream").synthesize(GEN_TEXT, ref, REF_TEXT, **kw)))
    np.testing.assert_allclose(fast, up, rtol=0, atol=1e-4 * float(np.abs(up).max()))


_TEXT_ALPHABET = st.sampled_from([*list("abc xyz,.;:!?"), "，", "。", "你", "好", "é", "\t", "\n"])


@settings(max_examples=300, deadline=None)
@given(text=st.text(_TEXT_ALPHABET, max_size=80), max_chars=st.integers(1, 60))
def test_chunk_text_equals_upstream(text, max_chars):
    from f5_tts.infer.utils_infer import chunk_text

    assert tts_text.chunk_text(text, max_chars) == chunk_text(text, max_chars=max_chars)


class _EagerGraph:
    """Stands in for torch.cuda.CUDAGraph where there is no CUDA: the same step function, run on replay.
    This checks the graph path's plumbing (static buffers, per-step t/dt, in-place update, masks)."""

    def __init__(self, step, y, pool) -> None:
        self.step = step
        step()  # the warm-up run a capture does, which must not leak into the result

    def replay(self) -> None:
        self.step()


@pytest.mark.parametrize("bucket", [64, 1], ids=["bucketed-masked", "exact-length"])
def test_graph_step_path_equals_plain_path(root, bucket):
    ref = _ref(1.0, 0.1, seed=12)
    plain = np.concatenate(list(_synth(root).synthesize(GEN_TEXT, ref, REF_TEXT, nfe_step=6, seed=4)))
    graphed = _synth(root, bucket_frames=bucket)
    graphed.cuda_graphs = True
    graphed._graph_factory = _EagerGraph
    graphed.capture_buckets(256)  # what warm-up does: pre-made buckets must serve requests unchanged
    assert sorted(graphed._graphs) == ([64, 128, 192, 256] if bucket == 64 else [])
    first = np.concatenate(list(graphed.synthesize(GEN_TEXT, ref, REF_TEXT, nfe_step=6, seed=4)))
    # Second call reuses the bucket's "graph" and its buffers, with other inputs: must still be right.
    other = np.concatenate(list(graphed.synthesize(GEN_TEXT, ref, REF_TEXT, nfe_step=6, seed=5)))
    again = np.concatenate(list(graphed.synthesize(GEN_TEXT, ref, REF_TEXT, nfe_step=6, seed=4)))
    assert len(graphed._graphs) == (4 if bucket == 64 else 1)  # served by a pre-made bucket: no new one
    peak = float(np.abs(plain).max())
    np.testing.assert_allclose(first, plain, rtol=0, atol=1e-4 * peak)
    np.testing.assert_array_equal(again, first)
    assert not np.allclose(other, first)


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float16, 2e-3), (torch.bfloat16, 1e-2)],
                         ids=["fp16", "bf16"])
def test_reduced_precision_paths_equal_upstream_sampler_in_that_precision(root, dtype, tol):
    """The GPU runs the DiT in fp16 (vocos fp32): the same dtype plumbing (time grid, noise, constants,
    graph buffers) runs here on CPU against upstream's CFM.sample in the same precision. The tolerance
    is the precision's: a few ulp of fp16/bf16 per step, accumulated over the steps."""

    def synth(**kw):
        return _synth(root, dtype, **kw)

    ref = _ref(1.0, 0.1, seed=3)
    kw = {"nfe_step": 6, "seed": 1}
    up = np.concatenate(list(synth(sampler="upstream").synthesize(GEN_TEXT, ref, REF_TEXT, **kw)))
    fast = np.concatenate(list(synth().synthesize(GEN_TEXT, ref, REF_TEXT, **kw)))
    graphed = synth(bucket_frames=64)
    graphed.cuda_graphs = True
    graphed._graph_factory = _EagerGraph
    graph = np.concatenate(list(graphed.synthesize(GEN_TEXT, ref, REF_TEXT, **kw)))
    peak = float(np.abs(up).max())
    assert fast.dtype == np.float32 and np.isfinite(fast).all()
    np.testing.assert_allclose(fast, up, rtol=0, atol=tol * peak)
    np.testing.assert_allclose(graph, up, rtol=0, atol=tol * peak)


def test_length_snap_generates_whole_buckets_without_a_mask(root):
    """F5_LENGTH_SNAP (an option, off by default): each batch's length is rounded up to the bucket, so
    every frame is generated and no mask is needed; the graph path replays exactly that computation."""
    ref = _ref(1.0, 0.1, seed=12)
    plain = np.concatenate(list(_synth(root).synthesize(GEN_TEXT, ref, REF_TEXT, nfe_step=6, seed=4)))
    snap = _synth(root, bucket_frames=64, length_snap=True)
    eager = np.concatenate(list(snap.synthesize(GEN_TEXT, ref, REF_TEXT, nfe_step=6, seed=4)))
    assert len(plain) <= len(eager) < len(plain) + 64 * tts.HOP
    snap.cuda_graphs = True
    snap._graph_factory = _EagerGraph
    snap.capture_buckets(256)
    assert all(bufs["mask"] is None for _, bufs in snap._graphs.values())
    graphed = np.concatenate(list(snap.synthesize(GEN_TEXT, ref, REF_TEXT, nfe_step=6, seed=4)))
    np.testing.assert_allclose(graphed, eager, rtol=0, atol=1e-4 * float(np.abs(eager).max()))


@pytest.mark.parametrize("nfe", [32, 16, 7])
def test_cuda_default_path_equals_upstream_infer_at_upstreams_step_counts(root, upstream, nfe):
    """What a GPU worker runs by default (64-frame padded buckets, pre-captured step graphs, the key-padding
    attention bias, no length snap), here on CPU with the graph replaced by its step function: upstream's
    length and audio for the same seed, at NFE 32 (uniform steps) and 16 and 7 (upstream's EPSS schedules,
    which F5TTS.infer uses there too)."""
    from worker.settings import EngineSettings

    defaults = EngineSettings.from_env({})
    ref = _ref(1.5, 0.1, seed=31)
    up_ref_text, batches = _upstream_batches(ref, REF_TEXT, GEN_TEXT)
    want = _upstream_wave(upstream, ref, up_ref_text, batches, seed=8, nfe=nfe)
    synth = _synth(root, bucket_frames=defaults.f5_bucket_frames, length_snap=defaults.f5_length_snap)
    synth.cuda_graphs = True
    synth._graph_factory = _EagerGraph
    synth.capture_buckets(512)
    got = np.concatenate(list(synth.synthesize(GEN_TEXT, ref, REF_TEXT, nfe_step=nfe, seed=8)))
    assert len(synth._graphs) == 8  # served by a pre-captured bucket
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * float(np.abs(want).max()))


@pytest.mark.parametrize("nfe", [32, 16, 7, 5, 9])
def test_time_grid_is_upstreams(root, nfe):
    """The ODE time grid is CFM.sample's: EPSS where upstream has a schedule (5, 6, 7, 10, 12, 16 steps),
    uniform otherwise, then sway sampling."""
    from f5_tts.model.utils import get_epss_timesteps

    t = get_epss_timesteps(nfe, device="cpu", dtype=torch.float32)
    want = t + -1.0 * (torch.cos(torch.pi / 2 * t) - 1 + t)
    torch.testing.assert_close(_synth(root)._time_grid(nfe, -1.0), want, rtol=0, atol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_real_cuda_graphs_stay_right_after_their_capture_memory_is_reused(root):
    """A captured step reads the tensors it closed over (rotary table, buffers) at their capture-time
    addresses: once the allocator has handed freed memory to others, replays must still give the eager
    result (they gave NaN audio on an H200 while the graph did not keep its rotary table alive)."""
    arch = tts_load.load_arch(str(root / "f5" / "arch.json"))
    cfm = tts_load.load_cfm(arch, root / "f5" / "model_tiny.safetensors", root / "f5" / "vocab.txt", "cuda",
                       torch.float32)
    vocos = tts_load.load_vocos(root / "vocos", "cuda")
    ref = _ref(1.0, 0.1, seed=12)
    eager = tts.F5Synth(cfm, vocos, "cuda")
    plain = np.concatenate(list(eager.synthesize(GEN_TEXT, ref, REF_TEXT, nfe_step=6, seed=4)))
    graphed = tts.F5Synth(cfm, vocos, "cuda", bucket_frames=64, cuda_graphs=True)
    graphed.capture_buckets(512)
    torch.cuda.empty_cache()
    junk = [torch.full((1 << 18,), float("nan"), device="cuda") for _ in range(256)]
    del junk
    got = np.concatenate(list(graphed.synthesize(GEN_TEXT, ref, REF_TEXT, nfe_step=6, seed=4)))
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, plain, rtol=0, atol=1e-3 * float(np.abs(plain).max()))
