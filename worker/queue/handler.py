"""The RunPod handler: parse the job input, dispatch to the task, serialize the output. Nothing else.

Accepted input (``job["input"]``; full reference with examples in docs/jobs.md). Unknown fields are
refused with the list of accepted ones.

``task: "tts"`` (the default)
    ``text`` (required, <= WORKER_MAX_TEXT_CHARS), exactly one of ``ref_audio`` (base64, a data: URI, or an
    http(s) URL) or ``voice`` (a preset name), ``ref_text`` (transcribed with WhisperX when absent, cached
    by audio hash), ``language`` (ISO 639 code for alignment), ``speed`` [1.0; 0.25-4], ``nfe_step``
    [32; 1-128], ``cfg_strength`` [2.0; 0-10], ``sway_sampling_coef`` [-1.0; -1..1], ``seed`` [random;
    0..2**32-1], ``format`` [wav | flac | mp3 | ogg], ``sample_rate`` [24000; 8000..48000], ``timestamps``
    [false], ``subtitles`` [none | srt | vtt], ``stream`` [false].
    Output: ``audio`` (base64) or ``audio_url`` (S3, when over the response limit), ``format``,
    ``sample_rate``, ``duration``, ``ref_text``, ``words`` [{word, start, end}] (timestamps),
    ``subtitles`` + ``subtitles_format``, ``timings`` {prep, synth, align, total}.
    With ``stream: true``: items ``{chunk, audio, format, sample_rate}`` (each a complete file, <= 1 MB)
    as each sentence batch is ready, then ``{done: true, chunks, duration, words, subtitles, timings...}``.
``task: "transcribe"``
    ``audio`` (required: base64, data: URI or http(s) URL), ``language`` [detected], ``timestamps``
    [true], ``subtitles`` [none | srt | vtt]. Output: ``text``, ``language``, ``duration``,
    ``segments`` [{text, start, end}], ``words``, ``subtitles``, ``timings`` {prep, transcribe, total}.
``task: "voices"``
    No other field. Output: ``voices`` [{name, ref_text, duration, sample_rate}].

Errors: a bad input yields ``{"error": "input.<field>: why"}`` (all issues, ``; ``-joined) and the worker
keeps serving; a job past WORKER_JOB_TIMEOUT_S yields ``{"error": "job: ran past its deadline ..."}``; an
answer that cannot fit the response limit (a WAV: known before synthesis) ``{"error": "output: ..."}``;
a CUDA error or out-of-memory yields ``{"error": ..., "refresh_worker": true}`` and asks runpod to
restart the worker after the job.

Two handler shapes, because runpod fixes streaming per handler, not per job (``inspect.
isgeneratorfunction``): ``make_streaming_handler`` is a generator (needed for ``stream: true``; runpod
then returns ``output`` as the list of yielded items, so a non-streamed job's output is a list of one
dict, which must fit one stream item); ``make_plain_handler`` returns the dict itself (no streaming;
inline up to WORKER_MAX_RESPONSE_BYTES). ``make_handler`` picks one (``wants_streaming``: plain by
default, streaming with WORKER_STREAMING=1 unless runpod runs a local ``--test_input`` job, which cannot
iterate a generator); ``start_config`` builds what ``runpod.serverless.start`` takes and wires
``refresh_worker``. Real-time streaming (audio bytes as they are made) is the http mode's
(worker/serving).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from worker.errors import DeliveryError, EngineError, JobError
from worker.jobs.audio import MIME, b64
from worker.jobs.schema import (
    TranscribeRequest,
    TtsRequest,
    VoicesRequest,
    accepted_fields,
    parse_job,
)
from worker.jobs.tasks import JobDeadline, Jobs, too_large
from worker.settings import EngineSettings, JobSettings, Settings

if TYPE_CHECKING:
    from worker.engine.core import Engine

log = logging.getLogger(__name__)

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


class Handler:
    """Parse -> dispatch -> serialize for one engine; every failure becomes an ``{"error"}`` dict."""

    def __init__(self, engine: Engine, config: EngineSettings, limits: JobSettings,
                 on_fatal: Callable[[], None] | None = None) -> None:
        self.limits = limits
        self.jobs = Jobs(engine, limits, config.default_language)
        self.on_fatal = on_fatal

    def _failure(self, err: BaseException, job_id: str) -> dict:
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

    def run(self, job: dict, limit: int | None = None) -> dict:
        """One whole output as a dict (no streaming), never raising."""
        job_id = str(job.get("id", "?")) if isinstance(job, dict) else "?"
        try:
            deadline = JobDeadline(self.limits.job_timeout_s)
            request = parse_job(job.get("input") if isinstance(job, dict) else None, self.limits)
            return self._dispatch(request, job_id, limit or self.limits.max_response_bytes, deadline)
        except Exception as err:  # the handler is the boundary: nothing escapes to runpod
            return self._failure(err, job_id)

    def stream(self, job: dict) -> Iterator[dict]:
        """The generator shape: streamed items for ``stream: true``, else the one whole output."""
        job_id = str(job.get("id", "?")) if isinstance(job, dict) else "?"
        try:
            deadline = JobDeadline(self.limits.job_timeout_s)
            request = parse_job(job.get("input") if isinstance(job, dict) else None, self.limits)
            if isinstance(request, TtsRequest) and request.stream:
                item: dict = {}
                for item in self.jobs.tts_stream(request, deadline):
                    yield item
                _log_done(job_id, "tts (streamed)", item)
                return
            output = self._dispatch(request, job_id, self.limits.stream_chunk_bytes, deadline)
        except Exception as err:
            output = self._failure(err, job_id)
        yield output

    def _dispatch(self, request: Any, job_id: str, limit: int, deadline: JobDeadline) -> dict:
        if isinstance(request, VoicesRequest):
            return self.jobs.list_voices()
        if isinstance(request, TranscribeRequest):
            output = _within(self.jobs.transcribe(request, deadline), limit)
        else:
            # Without a bucket the answer must fit the limit: refused before synthesis when it cannot.
            tts, encoded = self.jobs.tts(request, deadline,
                                         None if self.limits.s3_configured else limit)
            output = self._deliver(tts, encoded, request.format, job_id, limit)
        _log_done(job_id, request.task, output)
        return output

    def _deliver(self, output: dict, encoded: bytes, fmt: str, job_id: str, limit: int) -> dict:
        text = b64(encoded)
        size = len(text) + len(json.dumps(output))
        if size <= limit:
            return {"audio": text, **output}
        if not self.limits.s3_configured:
            raise too_large(size, limit)
        from runpod.serverless.utils import rp_upload  # imported late: it configures logging on import

        url = rp_upload.upload_in_memory_object(
            f"{job_id}.{fmt}", encoded, bucket_name=self.limits.bucket_name, prefix="tts")
        log.info("handler: job %s output (%d bytes, %s) uploaded to the bucket", job_id, len(encoded),
                 MIME[fmt])
        return {"audio_url": url, **_within(output, limit)}


def _log_done(job_id: str, task: str, output: dict) -> None:
    timings = output.get("timings", {})
    log.info("handler: job %s %s done: %.2f s of audio in %.3f s (%s)", job_id, task,
             output.get("duration", 0.0), timings.get("total", 0.0),
             ", ".join(f"{k} {v}" for k, v in timings.items() if k != "total"))


def _within(output: dict, limit: int) -> dict:
    size = len(json.dumps(output))
    if size > limit:
        raise DeliveryError("output", f"the response would be {size} bytes, over the limit of {limit} bytes; "
                            "send shorter audio or leave out timestamps/subtitles")
    return output


def make_streaming_handler(engine: Engine, config: EngineSettings, limits: JobSettings,
                           on_fatal: Callable[[], None] | None = None) -> Callable[[dict], Iterator[dict]]:
    """The generator handler (per-job ``stream: true``); pair it with ``return_aggregate_stream``."""
    core = Handler(engine, config, limits, on_fatal)

    def handler(job: dict) -> Iterator[dict]:
        yield from core.stream(job)

    handler.core = core  # type: ignore[attr-defined]
    return handler


def make_plain_handler(engine: Engine, config: EngineSettings, limits: JobSettings
                       ) -> Callable[[dict], dict]:
    """The plain handler: the output dict itself, inline up to the response limit, no streaming."""
    core = Handler(engine, config, limits)

    def handler(job: dict) -> dict:
        return core.run(job)

    handler.core = core  # type: ignore[attr-defined]
    return handler


def runs_local_test(argv: list[str] | None = None, env: dict | None = None) -> bool:
    """True when runpod will run one local test job (``--test_input`` or ``test_input.json``).

    runpod 1.12 runs that job through ``run_job``, which calls the handler and returns what it returns:
    a generator handler's generator is never iterated, so the job "completes" without running."""
    argv = sys.argv[1:] if argv is None else argv
    env = dict(os.environ) if env is None else env
    if any(a == "--test_input" or a.startswith("--test_input=") for a in argv):
        return True
    if "--rp_serve_api" in argv or env.get("RUNPOD_REALTIME_PORT", "0") not in ("", "0"):
        return False
    return env.get("RUNPOD_WEBHOOK_GET_JOB") is None


def wants_streaming(limits: JobSettings) -> bool:
    """The generator handler when WORKER_STREAMING=1 (the default is the plain handler: each output is
    the documented dict, inline up to WORKER_MAX_RESPONSE_BYTES; docs/jobs.md, "Which handler"), unless
    runpod is about to run a local test job."""
    return limits.streaming and not runs_local_test()


def make_handler(engine: Engine, config: EngineSettings, limits: JobSettings,
                 on_fatal: Callable[[], None] | None = None, *, streaming: bool | None = None
                 ) -> Callable[[dict], Any]:
    """The job handler: the generator (streaming) one, or with ``streaming`` False, or None and
    ``wants_streaming()`` saying no, the plain one."""
    if streaming is None:
        streaming = wants_streaming(limits)
    log.info("handler: %s handler", "streaming (generator)" if streaming else "plain")
    if streaming:
        return make_streaming_handler(engine, config, limits, on_fatal)
    return make_plain_handler(engine, config, limits)


def start_config(engine: Engine, settings: Settings, *, streaming: bool | None = None) -> dict:
    """What ``runpod.serverless.start`` takes: ``runpod.serverless.start(start_config(engine, settings))``.

    A generator handler cannot return ``refresh_worker`` (runpod reads it only from a plain handler's
    dict), so on a GPU fault it sets the flag on this dict, which runpod's job loop checks after every
    job; use this rather than ``make_handler`` alone so that works."""
    start: dict = {"return_aggregate_stream": True}
    start["handler"] = make_handler(engine, settings.engine, settings.jobs, streaming=streaming,
                                    on_fatal=lambda: start.__setitem__("refresh_worker", True))
    return start
