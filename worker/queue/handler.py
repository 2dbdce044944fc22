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

import logging
import os
import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from worker.jobs.runner import Runner, log_done
from worker.jobs.schema import TtsRequest, parse_job
from worker.jobs.tasks import JobDeadline
from worker.queue.bucket import bucket_upload
from worker.settings import EngineSettings, JobSettings, Settings

if TYPE_CHECKING:
    from worker.engine.core import Engine

log = logging.getLogger(__name__)


class Handler:
    """Parse -> answer -> serialize for one engine (``Runner``, the job layer's core the http mode
    shares); every failure becomes an ``{"error"}`` dict."""

    def __init__(self, engine: Engine, config: EngineSettings, limits: JobSettings,
                 on_fatal: Callable[[], None] | None = None) -> None:
        self.runner = Runner(engine, config, limits, on_fatal, upload=bucket_upload(limits))
        self.jobs = self.runner.jobs
        self.limits = limits

    def run(self, job: dict, limit: int | None = None) -> dict:
        """One whole output as a dict (no streaming), never raising."""
        job_id = str(job.get("id", "?")) if isinstance(job, dict) else "?"
        try:
            deadline = JobDeadline(self.limits.job_timeout_s)
            request = parse_job(job.get("input") if isinstance(job, dict) else None, self.limits)
            return self.runner.answer(request, job_id, limit or self.limits.max_response_bytes, deadline)
        except Exception as err:  # the handler is the boundary: nothing escapes to runpod
            return self.runner.failure(err, job_id)

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
                log_done(job_id, "tts (streamed)", item)
                return
            output = self.runner.answer(request, job_id, self.limits.stream_chunk_bytes, deadline)
        except Exception as err:
            output = self.runner.failure(err, job_id)
        yield output


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
