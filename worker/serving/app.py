"""The HTTP routes of the http mode (Starlette), on ``worker.serving.service``.

    GET  /ping                      204 loading, 200 ready (worker.serving.state says when else)
    GET  /v1/models                 the two models and the OpenAI names they answer to
    GET  /v1/audio/voices           the preset voices (the queue mode's ``{"task": "voices"}``)
    POST /v1/audio/speech           OpenAI speech: whole file, ``stream_format`` audio (chunked) or sse
    POST /v1/audio/transcriptions   OpenAI transcription (multipart)
    POST /v1/jobs                   a native job: ``{"input": {...}}`` as the queue handler takes it;
                                    its output as the plain handler returns it (NDJSON items for
                                    ``stream: true``)

Each request that works (speech, transcription, jobs) takes one of ``WORKER_MAX_INFLIGHT`` slots, or is
answered 429 with ``Retry-After`` at once. The work runs on a pool thread (``_Run``), which holds the slot
until the work has really stopped; a client that disconnects trips the request's deadline, so the work
stops at its next check (an ODE step, a batch, a stage) and frees the slot.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from worker.serving import openai_api
from worker.serving.bodies import AudioStream, JobStream, read_form, read_json
from worker.serving.encode import MIME, StreamEncoder, encode_whole
from worker.serving.errors import ApiError
from worker.serving.state import WorkerState
from worker.settings import ServingSettings

log = logging.getLogger(__name__)

_ids = itertools.count(1)


class Slots:
    """At most ``size`` requests at work; no waiting room (a load-balancing endpoint has no queue). The
    work runs on a fixed pool of threads (one more than the slots: a thread giving its slot back is still
    finishing), so memory does not grow with a thread, and its allocator arena, per request."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.busy = 0
        self._lock = threading.Lock()
        self.pool = ThreadPoolExecutor(size + 1, thread_name_prefix="serving-run")
        self.cancels: set[threading.Event] = set()  # of the work running now

    def stop(self) -> None:
        """At shutdown: every running work stops at its next check (the pool's threads are joined at
        exit, which must not wait for minutes of synthesis nobody will receive)."""
        with self._lock:
            for cancel in self.cancels:
                cancel.set()
        self.pool.shutdown(wait=False, cancel_futures=True)

    def take(self) -> bool:
        with self._lock:
            if self.busy >= self.size:
                return False
            self.busy += 1
            return True

    def give(self) -> None:
        with self._lock:
            self.busy -= 1


class _Run:
    """One request's work on a pool thread; what it emits reaches the event loop in order. The slot is
    given back when the thread ends, not when the client leaves."""

    def __init__(self, slots: Slots) -> None:
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue = asyncio.Queue()
        self.cancel = threading.Event()
        self.slots = slots

    def start(self, work: Callable[[_Run], None]) -> None:
        def main() -> None:
            with self.slots._lock:
                self.slots.cancels.add(self.cancel)
            try:
                work(self)
            except BaseException as err:  # the loop answers it
                if self.cancel.is_set():
                    log.info("serving: work stopped: %s", err)
                self.emit("error", err)
            finally:
                with self.slots._lock:
                    self.slots.cancels.discard(self.cancel)
                self.slots.give()
                self.emit("closed")

        self.slots.pool.submit(main)

    def emit(self, kind: str, value: Any = None) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, (kind, value))
        except RuntimeError:  # the loop is gone (shutdown): nobody is listening
            self.cancel.set()

    async def watch(self, receive: Callable) -> None:
        """Wait for the client to go away (the body has been read: the next message is the disconnect)."""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.cancel.set()
                self.emit("gone")
                return

    async def next(self) -> tuple[str, Any]:
        return await self.queue.get()


def build_app(state: WorkerState, settings: ServingSettings) -> Starlette:
    slots = Slots(settings.max_inflight)
    retry = {"Retry-After": str(settings.retry_after_s)}

    def ready() -> Any:
        if state.service is not None:
            return state.service
        if state.failure is not None:
            state.tell()
            raise ApiError(503, state.failure.line, None, "worker_startup_failed")
        raise ApiError(503, f"the worker is starting (phase: {state.phase}); retry shortly", None,
                       "worker_loading", retry)

    def run_or_429() -> _Run:
        if not slots.take():
            raise ApiError(429, f"the worker is busy: {slots.size} requests in flight (WORKER_MAX_INFLIGHT); "
                                f"retry after {settings.retry_after_s} s", None, "worker_busy", retry)
        return _Run(slots)

    async def ping(request: Request) -> Response:
        status = state.ping()
        if status == 204:
            return Response(status_code=204)
        body: dict = {"status": "ready" if status == 200 and state.failure is None else "failed",
                      "inflight": slots.busy, "max_inflight": slots.size}
        if state.failure is not None:
            body["error"] = state.failure.line
        return JSONResponse(body, status)

    async def models(request: Request) -> Response:
        return JSONResponse(openai_api.models())

    async def voices(request: Request) -> Response:
        service = ready()
        return JSONResponse(await asyncio.to_thread(service.voices))

    async def speech(request: Request) -> Response:
        service = ready()
        body = await read_json(request, service.limits.max_audio_bytes * 4 // 3 + 1_000_000)
        call, issues = openai_api.speech_call(body)
        tts = service.checked(call.job, openai_api.SPEECH_NAMES, issues)
        issues.raise_any()
        run = run_or_429()
        request_id = f"speech-{next(_ids)}"
        started = time.perf_counter()

        def work(run: _Run) -> None:
            deadline = service.deadline(run.cancel)
            _, chunks = service.speech(tts, deadline)
            run.emit("started")
            encoder = StreamEncoder(call.response_format, service.sample_rate) if call.stream_format else None
            whole: list = []
            seconds = 0.0
            try:
                for chunk in chunks:
                    deadline.check("delivering the audio")
                    seconds += len(chunk) / service.sample_rate
                    if encoder is None:
                        whole.append(chunk)
                    elif data := encoder.push(chunk):
                        run.emit("data", data)
                if encoder is None:
                    deadline.check("encoding the audio")
                    run.emit("data", encode_whole(whole, call.response_format, service.sample_rate))
                elif data := encoder.finish():
                    run.emit("data", data)
            finally:
                chunks.close()
                if encoder is not None:
                    encoder.close()
            log.info("serving: %s done: %.2f s of %s audio in %.3f s", request_id, seconds,
                     call.response_format, time.perf_counter() - started)
            run.emit("end")

        run.start(work)
        watcher = asyncio.create_task(run.watch(request.receive))
        kind, value = await run.next()
        if kind != "started":
            watcher.cancel()
            raise _failure(service, kind, value, openai_api.SPEECH_NAMES, request_id)
        if call.stream_format is None:
            try:
                data = b""
                while (item := await run.next())[0] == "data":
                    data += item[1]
                if item[0] != "end":
                    raise _failure(service, *item, openai_api.SPEECH_NAMES, request_id)
            finally:
                watcher.cancel()
            return Response(data, media_type=MIME[call.response_format])
        return AudioStream(run, watcher, call.response_format, call.stream_format == "sse", request_id)

    async def transcriptions(request: Request) -> Response:
        service = ready()
        fields, audio = await read_form(request, service.limits.max_audio_bytes + 1_000_000)
        call, issues = openai_api.transcription_call(fields, audio)
        asr = service.checked(call.job, openai_api.TRANSCRIBE_NAMES, issues)
        issues.raise_any()
        run = run_or_429()
        run.start(lambda run: run.emit("done", service.transcribe(asr, service.deadline(run.cancel))))
        watcher = asyncio.create_task(run.watch(request.receive))
        try:
            kind, value = await run.next()
        finally:
            watcher.cancel()
        if kind != "done":
            raise _failure(service, kind, value, openai_api.TRANSCRIBE_NAMES, "transcription")
        body, media_type = openai_api.transcription_body(call, value)
        if media_type == "application/json":
            return JSONResponse(body)
        return Response(body, media_type=media_type)

    async def jobs(request: Request) -> Response:
        try:
            service = ready()
        except ApiError as err:  # the native route answers in the queue handler's shape
            return JSONResponse({"error": err.message}, err.status, headers=err.headers)
        body = await read_json(request, service.limits.max_audio_bytes * 4 // 3 + 1_000_000)
        job_input = body.get("input") if isinstance(body, dict) else None
        job_id = str(body.get("id") or f"http-{next(_ids)}") if isinstance(body, dict) else "http"
        run = run_or_429()

        def work(run: _Run) -> None:
            out = service.job(job_input, service.deadline(run.cancel), job_id)
            if isinstance(out, tuple):
                run.emit("done", out)
                return
            try:
                first = next(out)
            except Exception as err:
                run.emit("done", service.job_failure(err, job_id))
                return
            run.emit("started", first)
            try:
                for item in out:
                    run.emit("item", item)
            except Exception as err:
                run.emit("item", service.job_failure(err, job_id)[1])
            run.emit("end")

        run.start(work)
        watcher = asyncio.create_task(run.watch(request.receive))
        kind, value = await run.next()
        if kind == "done":
            watcher.cancel()
            return JSONResponse(value[1], value[0])
        if kind != "started":
            watcher.cancel()
            status, out = service.job_failure(value, job_id) if kind == "error" else (499, {})
            return JSONResponse(out, status)
        return JobStream(run, watcher, value)

    async def not_found(request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 404)
        return _error(ApiError(status, f"{request.method} {request.url.path}: "
                               f"{'no such route' if status == 404 else 'method not allowed'}", None,
                               "unknown_route" if status == 404 else "method_not_allowed"))

    async def api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return _error(exc)

    routes = [
        Route("/ping", ping, methods=["GET"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/audio/voices", voices, methods=["GET"]),
        Route("/v1/audio/speech", speech, methods=["POST"]),
        Route("/v1/audio/transcriptions", transcriptions, methods=["POST"]),
        Route("/v1/jobs", jobs, methods=["POST"]),
    ]
    app = Starlette(routes=routes, exception_handlers={ApiError: api_error, HTTPException: not_found})
    app.state.slots = slots
    return app


def build_health_app(state: WorkerState, settings: ServingSettings) -> Starlette:
    """Only ``/ping``, for a PORT_HEALTH apart from PORT."""
    app = build_app(state, settings)
    app.router.routes = [r for r in app.router.routes if getattr(r, "path", "") == "/ping"]
    return app


def _error(err: ApiError) -> Response:
    return JSONResponse(err.body(), err.status, headers=err.headers)


def _failure(service: Any, kind: str, value: Any, names: dict, request_id: str) -> ApiError:
    if kind == "error":
        return service.failure(value, names, request_id)
    return ApiError(499, "client: disconnected", None, "client_disconnected")
