"""A parsed job to its output, and every failure to its ``{"error": ...}`` answer: the core both front
ends share (the queue handler, worker/queue/handler.py, and the http mode, worker/serving/service.py),
so they refuse, time out, deliver and report GPU faults alike.

``Runner.answer`` runs one request on the job layer (``Jobs``) and delivers its output: inline while it
fits the caller's limit, else through ``upload`` (the bucket; the front end passes it in, since the
upload goes through the runpod SDK, which this layer does not import), else a ``DeliveryError`` before
synthesis where the size is known in advance (a WAV). ``Runner.failure`` maps an exception by its type
and its issues' ``where``: a refusal names the job's ``input.<field>``; a CUDA fault or out-of-memory
asks for a fresh worker (``refresh_worker``) and tells ``on_fatal``; anything else is an internal error
the worker survives.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from worker.errors import DeliveryError, EngineError, JobError
from worker.jobs.audio import MIME, b64
from worker.jobs.schema import TranscribeRequest, VoicesRequest, accepted_fields
from worker.jobs.tasks import JobDeadline, Jobs, too_large
from worker.settings import EngineSettings, JobSettings

if TYPE_CHECKING:
    from worker.engine.core import Engine

log = logging.getLogger(__name__)

# (object name, bytes) -> the URL the output can be fetched from.
Upload = Callable[[str, bytes], str]

_JOB_FIELDS = frozenset(accepted_fields("tts")) | frozenset(accepted_fields("transcribe"))
_FATAL_MARKERS = ("CUDA error", "CUDA out of memory", "CUBLAS_STATUS", "CUDNN_STATUS", "cuDNN error",
                  "device-side assert", "NCCL error", "illegal memory access")


def is_fatal(err: BaseException) -> bool:
    """A CUDA fault or OOM: the process's GPU state is suspect, so the worker should be replaced. torch
    raises these as plain RuntimeErrors (``torch.cuda.OutOfMemoryError`` is one, "CUDA out of memory"),
    so its wording is all there is to tell them by."""
    text = f"{type(err).__name__}: {err}"
    return isinstance(err, RuntimeError | MemoryError) and any(m in text for m in _FATAL_MARKERS)


def job_field(where: str, *, engine: bool = False) -> str | None:
    """The job input field an issue's ``where`` names, or None (a stage, a variable): ``input.<field>``
    from the job layer; from the engine (``engine``), its argument name where that is a job field."""
    if engine:
        return where if where in _JOB_FIELDS else None
    return where.removeprefix("input.") if where.startswith("input.") else None


def refusal(err: JobError | EngineError) -> str:
    """What the client reads. The engine names its own arguments (``language``); those that are job
    fields are the job's ``input.<field>``."""
    if isinstance(err, EngineError):
        return "; ".join(str(i._replace(where=f"input.{i.where}") if job_field(i.where, engine=True) else i)
                         for i in err.found)
    return str(err)


class Runner:
    """One engine's jobs, answered: ``answer`` (a parsed request -> its output dict) and ``failure``."""

    def __init__(self, engine: Engine, config: EngineSettings, limits: JobSettings,
                 on_fatal: Callable[[], None] | None = None, upload: Upload | None = None) -> None:
        self.limits = limits
        self.jobs = Jobs(engine, limits, config.default_language)
        self.on_fatal = on_fatal
        self.upload = upload

    def answer(self, request: Any, job_id: str, limit: int, deadline: JobDeadline) -> dict:
        if isinstance(request, VoicesRequest):
            return self.jobs.list_voices()
        if isinstance(request, TranscribeRequest):
            output = within(self.jobs.transcribe(request, deadline), limit)
        else:
            # Without a bucket the answer must fit the limit: refused before synthesis when it cannot.
            tts, encoded = self.jobs.tts(request, deadline, limit if self.upload is None else None)
            output = self._deliver(tts, encoded, request.format, job_id, limit)
        log_done(job_id, request.task, output)
        return output

    def failure(self, err: BaseException, job_id: str) -> dict:
        if isinstance(err, JobError | EngineError):
            log.info("handler: job %s refused: %s", job_id, err)
            return {"error": refusal(err)}
        if is_fatal(err):
            log.error("handler: job %s hit a GPU fault; asking for a fresh worker: %s", job_id, err)
            if self.on_fatal is not None:
                self.on_fatal()
            return {"error": f"worker GPU failure ({type(err).__name__}: {err}); the worker will be "
                             "replaced, retry the job", "refresh_worker": True}
        log.exception("handler: job %s failed unexpectedly", job_id)
        return {"error": f"internal error ({type(err).__name__}: {err}); the worker keeps serving"}

    def _deliver(self, output: dict, encoded: bytes, fmt: str, job_id: str, limit: int) -> dict:
        text = b64(encoded)
        size = len(text) + len(json.dumps(output))
        if size <= limit:
            return {"audio": text, **output}
        if self.upload is None:
            raise too_large(size, limit)
        url = self.upload(f"{job_id}.{fmt}", encoded)
        log.info("handler: job %s output (%d bytes, %s) uploaded to the bucket", job_id, len(encoded),
                 MIME[fmt])
        return {"audio_url": url, **within(output, limit)}


def log_done(job_id: str, task: str, output: dict) -> None:
    timings = output.get("timings", {})
    log.info("handler: job %s %s done: %.2f s of audio in %.3f s (%s)", job_id, task,
             output.get("duration", 0.0), timings.get("total", 0.0),
             ", ".join(f"{k} {v}" for k, v in timings.items() if k != "total"))


def within(output: dict, limit: int) -> dict:
    size = len(json.dumps(output))
    if size > limit:
        raise DeliveryError("output", f"the response would be {size} bytes, over the limit of {limit} bytes; "
                            "send shorter audio or leave out timestamps/subtitles")
    return output
