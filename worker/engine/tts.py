"""F5-TTS synthesis: a request checked and planned, its batches through the sampler, their audio joined.

Three modules serve this one: ``tts_text`` (chunking, clause splits, batch planning, cross-fades),
``tts_load`` (checkpoint, vocoder, model construction) and ``tts_sampler`` (the ODE loop, step graphs,
batched rows); ``F5Synth`` is the ``Sampler`` with the reference, the text and the vocoder around it.

What upstream `F5TTS.infer` does per call, and what this engine does instead (DESIGN.md: upstream is
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

import logging
import math
import random
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout

import numpy as np
import torch

from worker.engine import batching
from worker.engine.tts_load import HOP, SAMPLE_RATE
from worker.engine.tts_sampler import RowJob, Sampler
from worker.engine.tts_text import (
    Batch,
    CrossFader,
    Prepared,
    batch_duration,
    clip,
    normalize_ref_text,
    plan_batches,
    utf8_len,
)
from worker.errors import EngineError

log = logging.getLogger(__name__)

TARGET_RMS = 0.1
MAX_REF_SECONDS = 20.0


class F5Synth(Sampler):
    """Warm F5-TTS: CFM/DiT + Vocos loaded once; `synthesize` yields cross-faded float32 chunks."""

    max_ref_seconds = MAX_REF_SECONDS  # the engine sets the configured cap (WORKER_MAX_REF_SECONDS)

    def __init__(self, cfm, vocos, device: str, *, sampler: str = "fast", bucket_frames: int = 1,
                 cuda_graphs: bool = False, compile_mode: str | None = None,
                 first_chunk_chars: int = 0, length_snap: bool = False, batch_rows: int = 1,
                 batch_window_s: float = 0.01) -> None:
        self.cfm, self.vocos = cfm, vocos
        self.sampler = sampler
        self.first_chunk_chars = first_chunk_chars
        # One batch at a time: graph buffers and the DiT's cached text embeddings are shared state. Held
        # per batch, never across a yield, so concurrent streams interleave batch by batch.
        self._lock = threading.Lock()
        # Concurrent requests share DiT forwards (worker/engine/batching.py) when batch_rows > 1.
        self.gatherer: batching.Gatherer | None = None
        if batch_rows > 1 and sampler != "upstream":
            self.gatherer = batching.Gatherer(self._run_rows_locked, key=RowJob.key, max_rows=batch_rows,
                                              window_s=batch_window_s)
        super().__init__(cfm.transformer, device, bucket_frames=bucket_frames, cuda_graphs=cuda_graphs,
                         compile_mode=compile_mode, length_snap=length_snap,
                         masked_rows=self.gatherer is not None)

    def plan(self, text: str, ref_text: str, ref_seconds: float, speed: float, seed: int,
             first_chunk_chars: int | None = None) -> list[Batch]:
        """The request's text batches (``tts_text.plan_batches``), the first one cut to F5_FIRST_CHUNK_CHARS
        unless ``first_chunk_chars`` says otherwise."""
        first = self.first_chunk_chars if first_chunk_chars is None else first_chunk_chars
        return plan_batches(text, ref_text, ref_seconds, speed, seed, first)

    def _batch_frames(self, prepared: Prepared, batch: Batch, speed: float) -> int:
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
                first_chunk_chars: int | None = None) -> Prepared:
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
        ref_text = normalize_ref_text(ref_text)
        batches = self.plan(text, ref_text, seconds, speed, seed, first_chunk_chars)
        if not batches:
            raise EngineError("text", "nothing to say after splitting into sentences")
        prepared = Prepared(batches, ref, ref_text, len(ref) // HOP)
        limit = self.max_frames
        for batch in batches:
            frames = self._batch_frames(prepared, batch, speed)
            if frames > limit:
                raise EngineError(
                    "text", f"the piece {clip(batch.gen_text)!r} needs {frames} frames of audio with this "
                    f"reference ({frames * HOP / SAMPLE_RATE:.0f} s), past the model's limit of {limit} "
                    f"({limit * HOP / SAMPLE_RATE:.0f} s): F5 gives each character the time the reference "
                    f"spends per character of ref_text ({seconds:.1f} s for {utf8_len(ref_text)} bytes); "
                    "send the reference's full transcript in ref_text, a shorter reference, or a higher "
                    "speed")
        return prepared

    def planned_seconds(self, prepared: Prepared, speed: float, cross_fade_s: float = 0.15) -> float:
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

    def _stream(self, prepared: Prepared, speed, nfe_step, cfg_strength, sway_sampling_coef,
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
                 check: Callable[[], None]) -> RowJob:
        from f5_tts.model.utils import convert_char_to_pinyin, list_str_to_idx

        duration = batch_duration(ref_frames, ref_text, batch.gen_text, speed)
        chars = convert_char_to_pinyin([ref_text + batch.gen_text])
        ids = list_str_to_idx(chars, self.cfm.vocab_char_map).to(self.device)
        return RowJob(cond, ids, duration, batch.seed, steps, cfg, sway, ref_frames, check)

    def _run_rows_locked(self, jobs: Sequence[RowJob]) -> list[np.ndarray | BaseException]:
        with self._lock, torch.inference_mode():
            return self._run_rows(jobs)

    def _run_rows(self, jobs: Sequence[RowJob]) -> list[np.ndarray | BaseException]:
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


def _no_check() -> None:
    pass


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

