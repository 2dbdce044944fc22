"""The one adapter between the http mode and the job layer: every call this package makes into
worker/jobs/ is here, so the job layer can move without the routes noticing.

The routes get the same validation (``parse_job``: one schema of limits and errors), the same reference
handling, synthesis and transcription (``Jobs``), the same output of a native job and the same failure
messages (``Runner``, the core the queue handler runs on: an input error names the field, a GPU fault
asks for a fresh worker, an output over the limit goes to the bucket) as the queue mode. What is
added: a deadline that a client's disconnect also trips (``RequestDeadline``), and each failure as an
HTTP status with the OpenAI field it concerns (``ApiError``), read off the error's issues (``where``),
never its message.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from worker.errors import DeliveryError, EngineError, JobError, JobInputError, JobTimeout, VoiceError
from worker.jobs.runner import Runner, is_fatal, job_field
from worker.jobs.schema import Request, TranscribeRequest, TtsRequest, parse_job
from worker.jobs.tasks import JobDeadline
from worker.jobs.voices import VOICE_NAME
from worker.queue.bucket import bucket_upload
from worker.serving.errors import ApiError, Cancelled
from worker.settings import EngineSettings, JobSettings

if TYPE_CHECKING:
    from worker.engine.core import Engine

log = logging.getLogger(__name__)

_CODES = {400: "invalid_value", 413: "output_too_large", 504: "job_timeout"}


class RequestDeadline(JobDeadline):
    """A job's deadline (WORKER_JOB_TIMEOUT_S) that a client's disconnect trips as well."""

    def __init__(self, seconds: float, cancel: threading.Event) -> None:
        super().__init__(seconds)
        self.cancel = cancel

    def check(self, stage: str | None = None) -> None:
        if self.cancel.is_set():
            raise Cancelled("client", f"disconnected while {stage or self.stage}")
        super().check(stage)


class Service:
    """A warm engine behind the job layer, as the routes use it."""

    def __init__(self, engine: Engine, config: EngineSettings, limits: JobSettings,
                 on_fatal: Callable[[], None] | None = None) -> None:
        self.runner = Runner(engine, config, limits, on_fatal, upload=bucket_upload(limits))
        self.jobs = self.runner.jobs
        self.limits = limits
        self.sample_rate: int = engine.sample_rate

    def deadline(self, cancel: threading.Event) -> RequestDeadline:
        return RequestDeadline(self.limits.job_timeout_s, cancel)

    def parse(self, job_input: Mapping[str, Any]) -> Request:
        """The queue handler's validation; raises ``JobInputError`` listing every issue."""
        return parse_job(job_input, self.limits)

    def speech(self, request: TtsRequest, deadline: JobDeadline) -> tuple[str, Iterator[np.ndarray]]:
        return self.jobs.speech(request, deadline)

    def transcribe(self, request: TranscribeRequest, deadline: JobDeadline) -> dict:
        return self.jobs.transcribe(request, deadline)

    def voices(self) -> dict:
        return self.jobs.list_voices()

    def checked(self, job_input: Mapping[str, Any], names: Mapping[str, str], issues: Any) -> Request | None:
        """The job layer's validation of a route's job input, plus whether a named preset exists (said
        now, with the rest, not after the body is queued); the issues join ``issues``, renamed."""
        request = None
        try:
            request = self.parse(job_input)
        except JobInputError as err:
            issues.extend(self.failure(err, names))
        voice = job_input.get("voice")
        if isinstance(voice, str) and VOICE_NAME.fullmatch(voice):  # a malformed name: parse said so
            try:
                self.jobs.voices.get(voice)
            except VoiceError as err:
                issues.extend(self.failure(err, names))
                return None
        return request

    def job(self, job_input: Any, deadline: JobDeadline, job_id: str) -> tuple[int, dict] | Iterator[dict]:
        """A native job (the queue handler's input): (HTTP status, the plain handler's output), or for
        ``stream: true`` the queue handler's stream items (the first one fetches the reference)."""
        try:
            request = self.parse(job_input)
            if isinstance(request, TtsRequest) and request.stream:
                return self.jobs.tts_stream(request, deadline)
            return 200, self.runner.answer(request, job_id, self.limits.max_response_bytes, deadline)
        except Exception as err:
            return self.job_failure(err, job_id)

    def job_failure(self, err: BaseException, job_id: str) -> tuple[int, dict]:
        return status_of(err), self.runner.failure(err, job_id)

    def failure(self, err: BaseException, names: Mapping[str, str], job_id: str = "http") -> ApiError:
        """``err`` as the routes answer it: the queue handler's message, with the caller's field names."""
        status = status_of(err)
        if isinstance(err, Cancelled):
            return ApiError(499, str(err), None, "client_disconnected")
        message = self.runner.failure(err, job_id)["error"]  # logs it, and tells on_fatal of a GPU fault
        if not isinstance(err, JobError | EngineError):
            return ApiError(status, message, None, _CODES.get(status, "internal_error"))
        param, renamed = None, []
        for issue in err.found:
            field = job_field(issue.where, engine=isinstance(err, EngineError))
            if field is not None:  # said as the caller sent it; the first such field is the param
                issue = issue._replace(where=names.get(field, field))
                param = param or issue.where
            renamed.append(issue)
        return ApiError(status, "; ".join(map(str, renamed)), param, _CODES.get(status, "internal_error"))


def status_of(err: BaseException) -> int:
    if isinstance(err, Cancelled):
        return 499
    if isinstance(err, JobTimeout):
        return 504
    if isinstance(err, DeliveryError):
        return 413
    if isinstance(err, JobError | EngineError):  # the queue handler's refusals: a field is at fault
        return 400
    return 500


__all__ = ["Cancelled", "RequestDeadline", "Service", "TranscribeRequest", "TtsRequest", "is_fatal",
           "status_of"]
