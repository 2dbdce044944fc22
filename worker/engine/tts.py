"""F5-TTS synthesis: the upstream DiT and Vocos modules driven by the worker's own, faster sampling loop.

What upstream `F5TTS.infer` does per call, and what this module does instead (DESIGN.md: upstream is
host-bound, ~1,340 kernel launches per ODE step, and samples in a fresh thread per call):
- runs on the calling thread (no thread pool), models loaded once;
- computes everything that is constant across ODE steps once per batch: the reference mel, both text
  embeddings (cond/uncond), their share of the input projection, the rotary table, the time grid;
- runs cond and uncond (classifier-free guidance) as one batch-2 forward, like upstream;
- on CUDA: pads the mel length up to a bucket and replays one captured CUDA graph per bucket for each
  ODE step, removing the launch overhead; the padded frames are masked (a broadcast key-padding bias in
  attention, worker/engine/attention.py, and upstream's masked conv), so the valid frames, and so the length
  and the audio, are upstream's for the same seed. F5_LENGTH_SNAP instead rounds the length up to the
  bucket (no mask, slightly faster, longer audio than upstream's).
Each optimisation is switchable (worker/settings.py) and checked against the plain path on CPU by tests.

Text is batched like upstream (``chunk_text``: sentences and clauses up to a byte budget that keeps a
batch near 22 s), with one difference: a clause longer than the budget (no punctuation for hundreds
of characters) is split by words, then by characters, where upstream would make one batch of it and,
past the model's frame limit (the text position table: 8192 frames, ~87 s with the reference), fail
inside the DiT. A batch that still cannot fit (a reference transcript far too short for its audio:
F5 gives each character the reference's time per character) is refused by name before any work.
"""

from __future__ import annotations

import json
import logging
import math
import random
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from worker.engine import attention, batching
from worker.errors import EngineError, ModelError

log = logging.getLogger(__name__)

SAMPLE_RATE = 24_000
HOP = 256
N_MELS = 100
TARGET_RMS = 0.1
MAX_REF_SECONDS = 20.0
# Upstream's per-call budget: reference + generated audio of one batch stays under ~22 s.
BATCH_SECONDS = 22.0
# The sampler never makes a batch longer than this (upstream's CFM.sample default max_duration).
FRAME_CAP = 65536
_SENTENCE_END = re.compile(r"(?<=[;:,.!?])\s+|(?<=[；：，。！？])")


def _utf8_len(s: str) -> int:
    return len(s.encode("utf-8"))


def chunk_text(text: str, max_chars: int) -> list[str]:
    """Split at sentence/clause punctuation into batches of at most max_chars UTF-8 bytes (a single longer
    clause stays whole). Same batches as upstream's utils_infer.chunk_text (tested), so audio matches."""
    batches: list[str] = []
    current = ""
    for piece in _SENTENCE_END.split(text):
        if not piece:
            continue
        # Latin-script pieces are rejoined with a space; CJK pieces (multi-byte last char) are not.
        joined = piece + " " if _utf8_len(piece[-1]) == 1 else piece
        if _utf8_len(current) + _utf8_len(piece) <= max_chars:
            current += joined
            continue
        if current:
            batches.append(current.strip())
        current = joined
    if current:
        batches.append(current.strip())
    return batches


def split_oversized(text: str, max_bytes: int) -> list[str]:
    """``text`` as pieces of at most ``max_bytes`` UTF-8 bytes: as many whole words as fit, a word
    longer than that split by characters (one character always makes a piece, however long)."""
    pieces: list[str] = []
    rest = text.strip()
    while _utf8_len(rest) > max_bytes:
        head, rest = take_prefix(rest, max_bytes)
        pieces.append(head)
    if rest:
        pieces.append(rest)
    return pieces


def take_prefix(text: str, max_bytes: int) -> tuple[str, str]:
    """(the longest run of whole words of ``text`` within ``max_bytes``, the rest); when the first word
    alone is longer, as many of its characters as fit (at least one). Whitespace inside is kept."""
    end = size = 0
    for word in re.finditer(r"\S+", text):
        size += _utf8_len(text[end:word.end()])
        if size > max_bytes:
            break
        end = word.end()
    if end == 0:
        size = 0
        for char in text:
            size += _utf8_len(char)
            if size > max_bytes and end > 0:
                break
            end += 1
    return text[:end].strip(), text[end:].strip()


def cross_fade_concat(waves: Sequence[np.ndarray], fade: int) -> np.ndarray:
    """Reference (non-streamed) joining of batch waves with linear cross-fades, as upstream joins them."""
    out = np.asarray(waves[0], dtype=np.float64)
    for wave in waves[1:]:
        n = min(fade, len(out), len(wave))
        if n <= 0:
            out = np.concatenate([out, wave])
            continue
        blended = out[-n:] * np.linspace(1, 0, n) + wave[:n] * np.linspace(0, 1, n)
        out = np.concatenate([out[:-n], blended, wave[n:]])
    return out.astype(np.float32)


class CrossFader:
    """Streams the cross-faded join: each batch is emitted at once except its last `fade` samples,
    which are held back and blended into the next batch. Concatenated output == cross_fade_concat."""

    def __init__(self, fade: int) -> None:
        self.fade = max(0, fade)
        self.held = np.zeros(0, dtype=np.float64)
        self.total = 0  # length of the joined audio so far, held tail included

    def push(self, wave: np.ndarray, last: bool) -> np.ndarray:
        wave = np.asarray(wave, dtype=np.float64)
        if self.total == 0:
            combined = wave
        else:
            n = min(self.fade, self.total, len(wave))
            if n <= 0:
                combined = np.concatenate([self.held, wave])
            else:
                blended = self.held[-n:] * np.linspace(1, 0, n) + wave[:n] * np.linspace(0, 1, n)
                combined = np.concatenate([self.held[:-n], blended, wave[n:]])
            self.total -= n
        self.total += len(wave)
        keep = 0 if last else min(self.fade, len(combined))
        self.held = combined[len(combined) - keep:]
        return combined[: len(combined) - keep].astype(np.float32)


@dataclass(frozen=True)
class Batch:
    gen_text: str
    seed: int


def batch_duration(ref_frames: int, ref_text: str, gen_text: str, speed: float) -> int:
    """Upstream's length rule: the reference's frames per byte of its transcript, times the batch's
    bytes, over the speed (very short texts are slowed down); the result includes the reference."""
    gen_len = _utf8_len(gen_text)
    local_speed = speed if gen_len >= 10 else 0.3
    return ref_frames + int(ref_frames / _utf8_len(ref_text) * gen_len / local_speed)


@dataclass(frozen=True)
class _Prepared:
    batches: list[Batch]
    ref: np.ndarray
    ref_text: str  # normalized; the joiner space is added at synthesis
    ref_frames: int

    @property
    def joiner_ref(self) -> str:
        # Upstream appends a space after a Latin-script reference so the two texts do not fuse.
        return self.ref_text + " " if _utf8_len(self.ref_text[-1]) == 1 else self.ref_text


def _resolve_dtype(name: str, device: str) -> torch.dtype:
    if name == "auto":
        return torch.float16 if device == "cuda" else torch.float32
    return {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}[name]


def load_arch(arch: str) -> dict:
    """DiT arguments: an f5_tts config name (F5TTS_v1_Base) or a JSON file of arguments."""
    path = Path(arch)
    if path.suffix == ".json" and path.is_file():
        return json.loads(path.read_text())
    from omegaconf import OmegaConf

    cfg_file = files("f5_tts").joinpath(f"configs/{arch}.yaml")
    if not cfg_file.is_file():
        raise ModelError("F5_ARCH", f"{arch!r} is neither an f5_tts config name nor a .json file")
    return dict(OmegaConf.to_container(OmegaConf.load(str(cfg_file)).model.arch))


def load_cfm(arch: dict, ckpt: Path, vocab: Path, device: str, dtype: torch.dtype):
    """The upstream CFM(DiT) with the checkpoint's EMA weights, in `dtype`, on `device`, eval mode."""
    from f5_tts.model import CFM, DiT
    from f5_tts.model.utils import get_tokenizer

    vocab_map, vocab_size = get_tokenizer(str(vocab), "custom")
    model = CFM(
        transformer=DiT(**arch, text_num_embeds=vocab_size, mel_dim=N_MELS),
        mel_spec_kwargs={"n_fft": 1024, "hop_length": HOP, "win_length": 1024, "n_mel_channels": N_MELS,
                         "target_sample_rate": SAMPLE_RATE, "mel_spec_type": "vocos"},
        odeint_kwargs={"method": "euler"},
        vocab_char_map=vocab_map,
    )
    if ckpt.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(ckpt), device="cpu")
    else:
        state = torch.load(str(ckpt), map_location="cpu", weights_only=True)
        state = state.get("ema_model_state_dict", state.get("model_state_dict", state))
    # Released checkpoints hold the EMA copy ("ema_model." prefix, plus bookkeeping entries).
    state = {k.removeprefix("ema_model."): v for k, v in state.items() if k not in ("initted", "step")}
    for key in ("mel_spec.mel_stft.mel_scale.fb", "mel_spec.mel_stft.spectrogram.window"):
        state.pop(key, None)
    model.load_state_dict(state)
    return model.to(dtype).to(device).eval()


def load_vocos(directory: Path, device: str):
    from vocos import Vocos

    vocos = Vocos.from_hparams(str(directory / "config.yaml"))
    state = torch.load(str(directory / "pytorch_model.bin"), map_location="cpu", weights_only=True)
    vocos.load_state_dict(state)
    return vocos.eval().to(device)


class _StepGraph:
    """One ODE step (batched CFG forward + Euler update) captured as a CUDA graph for one padded length."""

    def __init__(self, step, y: torch.Tensor, pool) -> None:
        self.y = y
        # The graph reads every tensor the step closes over (the rotary table, the static buffers) at the
        # addresses it had at capture: keep them alive as long as the graph, or the allocator hands that
        # memory to others and replays read garbage (seen on an H200: NaN audio once the rotary table of a
        # bucket had been freed and reused).
        self.step = step
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):  # warm-up outside capture: allocator and lazy kernel init
                step()
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, pool=pool):
            step()

    def replay(self) -> None:
        self.graph.replay()


class F5Synth:
    """Warm F5-TTS: CFM/DiT + Vocos loaded once; `synthesize` yields cross-faded float32 chunks."""

    max_ref_seconds = MAX_REF_SECONDS  # the engine sets the configured cap (WORKER_MAX_REF_SECONDS)

    def __init__(self, cfm, vocos, device: str, *, sampler: str = "fast", bucket_frames: int = 1,
                 cuda_graphs: bool = False, compile_mode: str | None = None,
                 first_chunk_chars: int = 0, length_snap: bool = False, batch_rows: int = 1,
                 batch_window_s: float = 0.01) -> None:
        self.cfm, self.vocos, self.device = cfm, vocos, device
        self.dit = cfm.transformer
        self.dtype = next(self.dit.parameters()).dtype
        self.sampler = sampler
        self.cuda_graphs = cuda_graphs and device == "cuda"
        self.bucket = max(1, bucket_frames)
        # Snap (an option, off by default): round each batch's generated length UP to the bucket instead of
        # padding it, so every frame is generated and no mask is needed. It saves the key-padding bias (8%
        # at NFE 32 on an H200: docs/BENCHMARKS.md) but a batch then lasts up to one bucket longer than
        # upstream's, so the audio is no longer upstream's for the same seed.
        self.length_snap = length_snap and self.bucket > 1
        self.first_chunk_chars = first_chunk_chars
        # One batch at a time: graph buffers and the DiT's cached text embeddings are shared state. Held
        # per batch, never across a yield, so concurrent streams interleave batch by batch.
        self._lock = threading.Lock()
        self._graphs: dict[int, tuple[_StepGraph, dict[str, torch.Tensor]]] = {}
        # Graphs of batched runs, keyed (padded, rows): captured on first use (~0.5 s each on an H200),
        # least recently used dropped past the bound.
        self._batch_graphs: OrderedDict[tuple[int, int], tuple[_StepGraph, dict[str, torch.Tensor]]] = \
            OrderedDict()
        self.batch_graphs_max = 32
        # Concurrent requests share DiT forwards (worker/engine/batching.py) when batch_rows > 1.
        self.gatherer: batching.Gatherer | None = None
        if batch_rows > 1 and sampler != "upstream":
            self.gatherer = batching.Gatherer(self._run_rows_locked, key=_RowJob.key, max_rows=batch_rows,
                                              window_s=batch_window_s)
        # Swappable so CPU tests can replay the very same step eagerly (no CUDA to capture on).
        self._graph_factory = _StepGraph
        self._pool = torch.cuda.graph_pool_handle() if self.cuda_graphs else None
        self._forward = self._dit_forward
        if compile_mode:
            # Automatic dynamic shapes: the first bucket compiles static, the second recompiles with a
            # symbolic length that serves every other bucket (dynamic=False would compile each of the ~33
            # buckets and, past dynamo's recompile limit of 8, silently run the rest uncompiled).
            self._forward = torch.compile(self._dit_forward, mode=compile_mode, dynamic=None)
        if ((self.bucket > 1 or self.cuda_graphs) and not self.length_snap) or self.gatherer is not None:
            # Padded frames must not be attended to: upstream's math with the key mask as a broadcast
            # additive bias (worker/engine/attention.py), which keeps a fast SDPA kernel. Batched rows of
            # unequal lengths are padded too, snapped or not.
            attention.install(self.dit)
        proj = self.dit.input_embed.proj
        # Input projection split by input: [x | cond | text]; only the x part changes across steps.
        self._w_x = proj.weight[:, :N_MELS]
        self._w_rest = proj.weight[:, N_MELS:]

    # ---- text batching -------------------------------------------------------------------------
    def plan(self, text: str, ref_text: str, ref_seconds: float, speed: float, seed: int,
             first_chunk_chars: int | None = None) -> list[Batch]:
        max_chars = int(_utf8_len(ref_text) / ref_seconds * max(BATCH_SECONDS - ref_seconds, 2.0) * speed)
        max_chars = max(max_chars, 1)
        first = self.first_chunk_chars if first_chunk_chars is None else first_chunk_chars
        if first and first < max_chars:
            small = chunk_text(text, first)
            # The first small batch stays (cut to size when its clause is longer); the rest is
            # regrouped under the normal budget.
            head, rest = take_prefix(small[0], first) if small else ("", "")
            texts = [head, *chunk_text(" ".join(t for t in (rest, *small[1:]) if t), max_chars)]
        else:
            texts = chunk_text(text, max_chars)
        # A clause longer than the budget (no punctuation to split at) is split by words, then
        # characters: one batch of it could pass the model's frame limit.
        texts = [piece for t in texts if t for piece in split_oversized(t, max_chars)]
        return [Batch(t, seed + i) for i, t in enumerate(texts)]

    @property
    def max_frames(self) -> int:
        """The longest batch (reference + generated mel frames) the DiT can take: its text position
        table (8192 frames in F5-TTS 1.1) when it has one, else the sampler's cap."""
        embed = self.dit.text_embed
        return min(embed.precompute_max_pos, FRAME_CAP) if embed.extra_modeling else FRAME_CAP

    def _batch_frames(self, prepared: _Prepared, batch: Batch, speed: float) -> int:
        """The frames ``_sample_fast`` will run for ``batch`` (the same rule, without the cap)."""
        from f5_tts.model.utils import convert_char_to_pinyin

        tokens = len(convert_char_to_pinyin([prepared.joiner_ref + batch.gen_text])[0])
        duration = batch_duration(prepared.ref_frames, prepared.joiner_ref, batch.gen_text, speed)
        frames = max(max(tokens, prepared.ref_frames + 1) + 1, duration)
        if self.length_snap:
            frames = math.ceil(frames / self.bucket) * self.bucket
        return frames

    # ---- public ----------------------------------------------------------------------------------
    def prepare(self, text: str, ref_audio: np.ndarray, ref_text: str, *, speed: float, seed: int,
                first_chunk_chars: int | None = None) -> _Prepared:
        """Check the inputs and plan the batches; refuse by name a batch the model cannot make."""
        ref = np.asarray(ref_audio, dtype=np.float32).reshape(-1)
        seconds = len(ref) / SAMPLE_RATE
        if seconds < HOP * 4 / SAMPLE_RATE:
            raise EngineError("ref_audio", "too short (need at least 0.05 s of reference speech)")
        if seconds > self.max_ref_seconds:
            raise EngineError("ref_audio", f"{seconds:.1f} s is longer than {self.max_ref_seconds:g} s; "
                                           "trim it (or raise WORKER_MAX_REF_SECONDS)")
        if not ref_text.strip():
            raise EngineError("ref_text",
                              "empty; give the reference transcript (or let the worker transcribe it)")
        if not text.strip():
            raise EngineError("text", "empty")
        ref_text = _normalize_ref_text(ref_text)
        batches = self.plan(text, ref_text, seconds, speed, seed, first_chunk_chars)
        if not batches:
            raise EngineError("text", "nothing to say after splitting into sentences")
        prepared = _Prepared(batches, ref, ref_text, len(ref) // HOP)
        limit = self.max_frames
        for batch in batches:
            frames = self._batch_frames(prepared, batch, speed)
            if frames > limit:
                raise EngineError(
                    "text", f"the piece {_clip(batch.gen_text)!r} needs {frames} frames of audio with this "
                    f"reference ({frames * HOP / SAMPLE_RATE:.0f} s), past the model's limit of {limit} "
                    f"({limit * HOP / SAMPLE_RATE:.0f} s): F5 gives each character the time the reference "
                    f"spends per character of ref_text ({seconds:.1f} s for {_utf8_len(ref_text)} bytes); "
                    "send the reference's full transcript in ref_text, a shorter reference, or a higher "
                    "speed")
        return prepared

    def planned_seconds(self, prepared: _Prepared, speed: float, cross_fade_s: float = 0.15) -> float:
        """A lower bound of the output's length: each batch's planned frames (Vocos makes n - 1 hops of
        samples from n frames; the sampler may run more frames, never fewer), less the cross-fades."""
        frames = sum(max(0, batch_duration(prepared.ref_frames, prepared.joiner_ref, b.gen_text, speed)
                         - prepared.ref_frames - 1) for b in prepared.batches)
        fades = (len(prepared.batches) - 1) * int(cross_fade_s * SAMPLE_RATE)
        return max(0, frames * HOP - fades) / SAMPLE_RATE

    def synthesize(self, text: str, ref_audio: np.ndarray, ref_text: str, *, speed: float = 1.0,
                   nfe_step: int = 32, cfg_strength: float = 2.0, sway_sampling_coef: float = -1.0,
                   seed: int | None = None, cross_fade_s: float = 0.15,
                   first_chunk_chars: int | None = None,
                   check: Callable[[], None] | None = None) -> Iterator[np.ndarray]:
        """Checks the inputs now (EngineError naming the field); the audio is made as the caller iterates.
        ``check`` is called before each batch and each ODE step: raising there stops the work (a job's
        deadline)."""
        if seed is None:
            seed = random.randrange(2**31)
            log.info("tts: no seed given, using %s", seed)
        prepared = self.prepare(text, ref_audio, ref_text, speed=speed, seed=seed,
                                first_chunk_chars=first_chunk_chars)
        return self._stream(prepared, speed, nfe_step, cfg_strength, sway_sampling_coef, cross_fade_s,
                            check or _no_check)

    def _stream(self, prepared: _Prepared, speed, nfe_step, cfg_strength, sway_sampling_coef,
                cross_fade_s, check: Callable[[], None]) -> Iterator[np.ndarray]:
        batches, ref = prepared.batches, prepared.ref
        # inference_mode is thread-global state: it is entered per batch and never held across a yield,
        # so the consumer's code between chunks runs in the mode it chose.
        with torch.inference_mode():
            audio = torch.from_numpy(ref).to(self.device).unsqueeze(0)
            rms = float(torch.sqrt(torch.mean(torch.square(audio))))
            if rms < TARGET_RMS:
                audio = audio * TARGET_RMS / max(rms, 1e-12)
            cond = self.cfm.mel_spec(audio).permute(0, 2, 1).to(self.dtype)
        fader = CrossFader(int(cross_fade_s * SAMPLE_RATE))
        joiner_ref = prepared.joiner_ref
        gatherer = self.gatherer
        if gatherer is not None:
            gatherer.open_stream()
        try:
            for i, batch in enumerate(batches):
                check()
                if gatherer is not None:
                    job = self._row_job(cond, audio.shape[-1] // HOP, joiner_ref, batch, speed, nfe_step,
                                        cfg_strength, sway_sampling_coef, check)
                    priority = batching.FIRST if i == 0 else batching.LATER
                    wave = _wait(gatherer.submit(job, priority), check)
                else:
                    with self._lock, torch.inference_mode():
                        wave = self._one_batch(cond, audio.shape[-1] // HOP, joiner_ref, batch, speed,
                                               nfe_step, cfg_strength, sway_sampling_coef, check)
                if rms < TARGET_RMS:
                    wave = wave * rms / TARGET_RMS
                chunk = fader.push(wave, last=i == len(batches) - 1)
                if len(chunk):
                    yield chunk
        finally:
            if gatherer is not None:
                gatherer.close_stream()

    # ---- one batch ---------------------------------------------------------------------------------
    def _one_batch(self, cond, ref_frames, ref_text, batch, speed, steps, cfg, sway,
                   check: Callable[[], None] = lambda: None) -> np.ndarray:
        from f5_tts.model.utils import convert_char_to_pinyin

        if self.sampler == "upstream":
            duration = batch_duration(ref_frames, ref_text, batch.gen_text, speed)
            chars = convert_char_to_pinyin([ref_text + batch.gen_text])
            mel = self._sample_upstream(cond, chars, duration, steps, cfg, sway, batch.seed)
            return self._decode(mel, ref_frames)
        (wave,) = self._run_rows([self._row_job(cond, ref_frames, ref_text, batch, speed, steps, cfg, sway,
                                                check)])
        if isinstance(wave, BaseException):
            raise wave
        return wave

    def _row_job(self, cond, ref_frames, ref_text, batch, speed, steps, cfg, sway,
                 check: Callable[[], None]) -> _RowJob:
        from f5_tts.model.utils import convert_char_to_pinyin, list_str_to_idx

        duration = batch_duration(ref_frames, ref_text, batch.gen_text, speed)
        chars = convert_char_to_pinyin([ref_text + batch.gen_text])
        ids = list_str_to_idx(chars, self.cfm.vocab_char_map).to(self.device)
        return _RowJob(cond, ids, duration, batch.seed, steps, cfg, sway, ref_frames, check)

    def _run_rows_locked(self, jobs: Sequence[_RowJob]) -> list[np.ndarray | BaseException]:
        with self._lock, torch.inference_mode():
            return self._run_rows(jobs)

    def _run_rows(self, jobs: Sequence[_RowJob]) -> list[np.ndarray | BaseException]:
        """One ODE for every job (one row each, CFG doubling them), then each row's audio."""
        mels = self._sample_rows(jobs)
        return [mel if isinstance(mel, BaseException) else self._decode(mel, job.ref_frames)
                for job, mel in zip(jobs, mels, strict=True)]

    def _decode(self, mel: torch.Tensor, ref_frames: int) -> np.ndarray:
        mel = mel[:, ref_frames:, :].float().permute(0, 2, 1)
        return self.vocos.decode(mel).squeeze(0).cpu().numpy()

    def _sample_upstream(self, cond, chars, duration, steps, cfg, sway, seed) -> torch.Tensor:
        mel, _ = self.cfm.sample(cond=cond, text=chars, duration=duration, steps=steps, cfg_strength=cfg,
                                 sway_sampling_coef=sway, seed=seed)
        return mel

    def _time_grid(self, steps: int, sway: float | None) -> torch.Tensor:
        from f5_tts.model.utils import get_epss_timesteps

        t = get_epss_timesteps(steps, device=self.device, dtype=self.dtype)
        if sway is not None:
            t = t + sway * (torch.cos(torch.pi / 2 * t) - 1 + t)
        return t

    def _noise(self, frames: int, seed: int) -> torch.Tensor:
        # Same stream as upstream's torch.manual_seed(seed); torch.randn(...), without touching global RNG.
        gen = torch.Generator(device=self.device).manual_seed(seed)
        return torch.randn(frames, N_MELS, generator=gen, device=self.device, dtype=self.dtype)

    def _sample_fast(self, cond, ids, duration, steps, cfg, sway, seed,
                     check: Callable[[], None] = lambda: None) -> torch.Tensor:
        (mel,) = self._sample_rows([_RowJob(cond, ids, duration, seed, steps, cfg, sway, 0, check)])
        if isinstance(mel, BaseException):
            raise mel
        return mel

    def _frames(self, job: _RowJob) -> int:
        frames = min(max(max(job.ids.shape[1], job.cond.shape[1]) + 1, job.duration), FRAME_CAP)
        if self.length_snap:
            frames = min(math.ceil(frames / self.bucket) * self.bucket, FRAME_CAP)
        return frames

    def _row_const(self, job: _RowJob, frames: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The x-independent part of the input projection of one row, for (cond, uncond); uncond drops
        the audio too. Each [1, frames, dim], bias included."""
        dit, cond = self.dit, job.cond
        text_c = dit.text_embed(job.ids, frames, drop_text=False)
        text_u = dit.text_embed(job.ids, frames, drop_text=True)
        cond_full = F.pad(cond, (0, 0, 0, frames - cond.shape[1]))
        bias = dit.input_embed.proj.bias
        rest_c = torch.cat((cond_full, text_c), dim=-1) @ self._w_rest.T + bias
        rest_u = torch.cat((torch.zeros_like(cond_full), text_u), dim=-1) @ self._w_rest.T + bias
        return rest_c, rest_u

    def _sample_rows(self, jobs: Sequence[_RowJob]) -> list[torch.Tensor | BaseException]:
        """Every job (same steps, sway and guidance on/off: `_RowJob.key`) through one ODE: rows
        [cond_1..cond_R, uncond_1..uncond_R], each padded to the longest row's bucket and masked past its
        own length, so each row's frames are what it gets alone. One job's failing ``check`` (its
        deadline) stops that row's answer, not the others'."""
        rows = len(jobs)
        steps, sway = jobs[0].steps, jobs[0].sway
        frames = [self._frames(job) for job in jobs]
        padded = math.ceil(max(frames) / self.bucket) * self.bucket
        consts = [self._row_const(job, n) for job, n in zip(jobs, frames, strict=True)]
        const = torch.cat([F.pad(c[k], (0, 0, 0, padded - n)) for k in (0, 1)
                           for c, n in zip(consts, frames, strict=True)], dim=0)
        y = torch.cat([F.pad(self._noise(n, job.seed).unsqueeze(0), (0, 0, 0, padded - n))
                       for job, n in zip(jobs, frames, strict=True)], dim=0)
        mask = None
        # Graphs are shared by every length in a bucket, so they always mask (except exact-length
        # buckets, bucket_frames=1, which the bench uses to price the mask).
        # Rows of unequal length are masked past their own, snapped or not.
        shared_graph = not self.length_snap and self.cuda_graphs and self.bucket > 1
        if any(n != padded for n in frames) or shared_graph:
            lengths = torch.tensor(frames, device=self.device)[:, None]
            mask = (torch.arange(padded, device=self.device) < lengths).repeat(2, 1)
        cfgs = {job.cfg for job in jobs}
        cfg: float | torch.Tensor = jobs[0].cfg if len(cfgs) == 1 or jobs[0].cfg < 1e-5 else torch.tensor(
            [job.cfg for job in jobs], device=self.device, dtype=self.dtype).view(rows, 1, 1)
        errors: list[BaseException | None] = [None] * rows

        def check() -> None:
            for i, job in enumerate(jobs):
                if errors[i] is None:
                    try:
                        job.check()
                    except BaseException as exc:  # this row's job is over (its deadline): the others go on
                        errors[i] = exc
            if all(e is not None for e in errors):
                raise _RowsStopped

        t = self._time_grid(steps, sway)
        try:
            if self.cuda_graphs:
                y = self._run_graph(padded, y, const, mask, t, cfg, check)
            else:
                rope = self.dit.rotary_embed.forward_from_seq_len(padded)
                for i in range(steps):
                    check()
                    y = y + (t[i + 1] - t[i]) * self._velocity(y, const, mask, rope, t[i], cfg)
        except _RowsStopped:
            pass
        finally:
            self.dit.clear_cache()
        # Like upstream, the reference frames of the result are the reference itself. The mel of the
        # reference has one frame more than the caller's slice point (centered STFT), so this shows.
        return [errors[i] if errors[i] is not None else
                torch.cat((job.cond, y[i:i + 1, job.cond.shape[1]:frames[i]]), dim=1)
                for i, job in enumerate(jobs)]

    def _dit_forward(self, y, const, mask, rope, t) -> torch.Tensor:
        dit = self.dit
        rows = const.shape[0]  # 2R with guidance (cond_1..R, uncond_1..R), R without
        x = y.expand(rows, -1, -1) if y.shape[0] == 1 else y.repeat(rows // y.shape[0], 1, 1)
        h = x @ self._w_x.T + const
        h = dit.input_embed.conv_pos_embed(h, mask=mask) + h
        temb = dit.time_embed(t.reshape(1).repeat(rows))
        # The attention bias is built once per forward (inside the graph when captured), not per block.
        padding = None if mask is None else attention.KeyPadding.of(mask, h.dtype)
        for block in dit.transformer_blocks:
            h = block(h, temb, mask=padding, rope=rope)
        return dit.proj_out(dit.norm_out(h, temb))

    def _velocity(self, y, const, mask, rope, t, cfg) -> torch.Tensor:
        rows = y.shape[0]
        if not isinstance(cfg, torch.Tensor) and cfg < 1e-5:
            # Upstream skips the unconditional pass entirely without guidance (a batch never mixes
            # guided and unguided rows: `_RowJob.key`).
            return self._forward(y, const[:rows], None if mask is None else mask[:rows], rope, t)
        pred, null = self._forward(y, const, mask, rope, t).chunk(2, dim=0)
        return pred + (pred - null) * cfg

    def _run_graph(self, padded, y, const, mask, t, cfg,
                   check: Callable[[], None] = lambda: None) -> torch.Tensor:
        rows = y.shape[0]
        if rows > 1:
            return self._run_batch_graph(padded, y, const, mask, t, cfg, check)
        entry = self._graphs.get(padded)
        if entry is None:
            log.info("tts: capturing a CUDA graph for %s frames", padded)
            entry = self._capture(padded, y, const, mask, t,
                                  torch.tensor(cfg, device=self.device, dtype=self.dtype))
            self._graphs[padded] = entry
        return self._replay(entry, y, const, mask, t, cfg, check)

    def _capture(self, padded, y, const, mask, t, cfg: torch.Tensor):
        """One ODE step (batched CFG forward + Euler update) over static buffers shaped like the inputs,
        captured as a graph; the buffers are refilled before each replay (`_replay`)."""
        bufs = {"y": y.clone(), "const": const.clone(), "mask": None if mask is None else mask.clone(),
                "t": t[0].clone(), "dt": (t[1] - t[0]).clone(), "cfg": cfg}
        rope = self.dit.rotary_embed.forward_from_seq_len(padded)

        def step() -> None:
            pred, null = self._forward(bufs["y"], bufs["const"], bufs["mask"], rope, bufs["t"]).chunk(2)
            bufs["y"].add_(bufs["dt"] * (pred + (pred - null) * bufs["cfg"]))

        return self._graph_factory(step, bufs["y"], self._pool), bufs

    def _replay(self, entry, y, const, mask, t, cfg, check: Callable[[], None]) -> torch.Tensor:
        graph, bufs = entry
        bufs["y"].copy_(y)
        bufs["const"].copy_(const)
        if mask is not None:
            bufs["mask"].copy_(mask)
        if isinstance(cfg, torch.Tensor):
            bufs["cfg"].copy_(cfg.reshape(bufs["cfg"].shape))
        else:
            bufs["cfg"].fill_(cfg)
        for i in range(len(t) - 1):
            check()
            bufs["t"].copy_(t[i])
            bufs["dt"].copy_(t[i + 1] - t[i])
            graph.replay()
        return bufs["y"].clone()

    def _run_batch_graph(self, padded, y, const, mask, t, cfg, check: Callable[[], None]) -> torch.Tensor:
        """The graph of a batched run: rows rounded up to a power of two (the extra rows repeat the last
        one and are dropped), so at most a few graphs per bucket; captured on first use, the least
        recently used dropped past ``batch_graphs_max``."""
        rows = y.shape[0]
        size = 1 << (rows - 1).bit_length()
        if size != rows:
            extra = size - rows

            def widen(x: torch.Tensor, per: int) -> torch.Tensor:  # [per*rows, ...] -> [per*size, ...]
                parts = x.chunk(per, dim=0)
                return torch.cat([torch.cat((p, p[-1:].expand(extra, *p.shape[1:]))) for p in parts])

            y, const = widen(y, 1), widen(const, 2)
            mask = None if mask is None else widen(mask, 2)
            if isinstance(cfg, torch.Tensor):
                cfg = widen(cfg, 1)
        # A batched graph always takes a mask (all true when every row fills the bucket): one graph per
        # key serves rows of any lengths.
        if mask is None:
            mask = torch.ones(2 * size, padded, device=self.device, dtype=torch.bool)
        key = (padded, size)
        entry = self._batch_graphs.get(key)
        if entry is None:
            log.info("tts: capturing a CUDA graph for %s rows of %s frames", size, padded)
            entry = self._capture(padded, y, const, mask, t,
                                  torch.ones(size, 1, 1, device=self.device, dtype=self.dtype))
            self._batch_graphs[key] = entry
            while len(self._batch_graphs) > self.batch_graphs_max:
                self._batch_graphs.popitem(last=False)
        self._batch_graphs.move_to_end(key)
        return self._replay(entry, y, const, mask, t, cfg, check)[:rows]

    def disable_graphs(self) -> None:
        self.cuda_graphs = False
        self._graphs.clear()
        self._batch_graphs.clear()

    def capture_buckets(self, max_frames: int) -> None:
        """Pre-capture the graphs of every bucket up to max_frames, so no request pays a capture."""
        if not self.cuda_graphs or self.bucket == 1:  # exact lengths: too many to pre-capture
            return
        with self._lock, torch.inference_mode():
            for padded in range(self.bucket, max_frames + self.bucket, self.bucket):
                if padded in self._graphs:
                    continue
                y = torch.zeros(1, padded, N_MELS, device=self.device, dtype=self.dtype)
                const = torch.zeros(2, padded, self.dit.dim, device=self.device, dtype=self.dtype)
                mask = None
                if not self.length_snap:
                    mask = torch.ones(2, padded, device=self.device, dtype=torch.bool)
                self._run_graph(padded, y, const, mask, self._time_grid(2, None), 2.0)


def _no_check() -> None:
    pass


@dataclass
class _RowJob:
    """One request's text batch, ready for the sampler: one row of an ODE, alone or beside others."""

    cond: torch.Tensor  # [1, ref mel frames, mels]
    ids: torch.Tensor  # [1, tokens]
    duration: int
    seed: int
    steps: int
    cfg: float
    sway: float | None
    ref_frames: int  # where the generated audio starts (the reference's length in hops)
    check: Callable[[], None]

    def key(self) -> tuple:
        """Jobs with equal keys can share one ODE: one time grid, guidance on or off for all."""
        return (self.steps, self.sway, self.cfg >= 1e-5)


class _RowsStopped(Exception):
    """Every row of a run has stopped (their jobs' deadlines): the ODE ends early."""


def _wait(future: Future, check: Callable[[], None]) -> np.ndarray:
    """A batch's audio from the batcher; the job's own check runs while it waits (a deadline that passes
    while queued withdraws the batch)."""
    while True:
        try:
            return future.result(timeout=0.05)
        except FutureTimeout:
            try:
                check()
            except BaseException:
                future.cancel()
                raise


def _clip(text: str, keep: int = 40) -> str:
    return text if len(text) <= keep else text[:keep] + "..."


def _normalize_ref_text(ref_text: str) -> str:
    """Upstream ends the reference transcript with sentence punctuation plus a space."""
    ref_text = ref_text.strip()
    if ref_text.endswith("。"):
        return ref_text
    if ref_text.endswith("."):
        return ref_text + " "
    return ref_text + ". "
