"""WhisperX: CTranslate2 Whisper for transcription, wav2vec2 CTC models for word alignment.

The ASR model and the default language's alignment model load once at startup; other languages'
alignment models load on first use and stay cached. Audio is float32 mono 16 kHz numpy (no ffmpeg).
"""

from __future__ import annotations

import contextlib
import io
import logging
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from worker.errors import EngineError

log = logging.getLogger(__name__)

SAMPLE_RATE = 16_000
WINDOW_S = 30.0


@contextlib.contextmanager
def quiet_stdout(what: str) -> Iterator[None]:
    """Upstream loaders print to stdout; keep stdout clean (logs only) and keep their words at debug."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        yield
    for line in buf.getvalue().splitlines():
        if line.strip():
            log.debug("%s: %s", what, line)


def whole_clip_vad():
    """A VAD for clips known to be speech (reference audio, generated audio): the whole clip, cut into
    30 s windows. Skips pyannote's model on short inputs and never drops a quiet clip."""
    from whisperx.diarize import Segment as SegmentX
    from whisperx.vads.vad import Vad

    class WholeClip(Vad):
        def __init__(self) -> None:
            super().__init__(0.5)

        def __call__(self, audio: Mapping, **_kwargs):
            seconds = len(audio["waveform"]) / audio["sample_rate"]
            starts = np.arange(0.0, max(seconds, 1e-3), WINDOW_S)
            return [SegmentX(float(s), float(min(s + WINDOW_S, seconds)), "UNKNOWN") for s in starts]

        @staticmethod
        def preprocess_audio(audio):
            return audio

        @staticmethod
        def merge_chunks(segments, chunk_size, onset=0.5, offset=None):
            return Vad.merge_chunks(segments, chunk_size, onset, offset) if segments else []

    return WholeClip()


@dataclass
class AlignModel:
    model: object
    metadata: dict


class WhisperX:
    """Warm WhisperX models. `transcribe` returns whisperx's dict result; `align` aligns known segments."""

    def __init__(self, whisper_dir: Path, align_dirs: Mapping[str, object], default_language: str,
                 device: str, compute_type: str, batch_size: int, vad: str) -> None:
        """``align_dirs``: language -> a wav2vec2 directory, or a ``worker.engine.models.TorchaudioModel``."""
        import whisperx

        self.device = device
        self.batch_size = batch_size
        self.align_dirs = dict(align_dirs)
        self._align: dict[str, AlignModel] = {}
        # WhisperX's pipeline swaps its tokenizer per call and the models are shared: one call at a time.
        self._lock = threading.RLock()
        if compute_type == "auto":
            compute_type = "float16" if device == "cuda" else "int8"
        with quiet_stdout("whisperx.load_model"):
            self.pipeline = whisperx.load_model(
                str(whisper_dir), device, compute_type=compute_type, local_files_only=True,
                vad_model=whole_clip_vad() if vad == "none" else None, vad_method="pyannote",
            )
        self.align_model(default_language)

    @property
    def languages(self) -> tuple[str, ...]:
        return tuple(sorted(self.align_dirs))

    def align_model(self, language: str) -> AlignModel:
        cached = self._align.get(language)
        if cached is not None:
            return cached
        directory = self.align_dirs.get(language)
        if directory is None:
            raise EngineError(
                "language", f"no alignment model for {language!r} (configured: {', '.join(self.languages)}); "
                "add it to ALIGN_MODELS"
            )
        import whisperx

        from worker.engine.models import TorchaudioModel

        log.info("asr: loading the %s alignment model from %s", language, directory)
        with quiet_stdout("whisperx.load_align_model"):
            if isinstance(directory, TorchaudioModel):
                # torch.hub finds the weights already in model_dir (fetched at startup): no download.
                model, meta = whisperx.load_align_model(language, self.device, model_name=directory.bundle,
                                                        model_dir=str(directory.model_dir))
            else:
                model, meta = whisperx.load_align_model(language, self.device, model_name=str(directory),
                                                        model_cache_only=True)
        self._align[language] = AlignModel(model, meta)
        return self._align[language]

    def transcribe(self, audio: np.ndarray, language: str | None) -> dict:
        with self._lock, quiet_stdout("whisperx.transcribe"):
            return self.pipeline.transcribe(audio, batch_size=self.batch_size, language=language)

    def align(self, segments: list[dict], audio: np.ndarray, language: str) -> dict:
        import whisperx

        with self._lock:
            model = self.align_model(language)
        with self._lock, quiet_stdout("whisperx.align"):
            return whisperx.align(segments, model.model, model.metadata, audio, self.device,
                                  return_char_alignments=False)
