"""The bodies of the http mode's requests and answers: a request's JSON or multipart form read within a
byte limit (413 past it, 400 when it does not parse), and the streamed answers: ``AudioStream`` (audio
bytes as they are made, raw or as SSE events) and ``JobStream`` (a native streamed job as NDJSON). The
streams read what a request's work emits (``app._Run``) and stop that work when the client goes away.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from worker.serving.encode import MIME
from worker.serving.errors import ApiError

log = logging.getLogger("worker.serving.app")


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"the body is {declared} bytes; the limit is {limit}", None, "body_too_large")
    data = bytearray()
    async for part in request.stream():
        data += part
        if len(data) > limit:
            raise ApiError(413, f"the body is over the limit of {limit} bytes", None, "body_too_large")
    return bytes(data)


async def read_json(request: Request, limit: int) -> Any:
    data = await read_body(request, limit)
    try:
        return json.loads(data)
    except (UnicodeDecodeError, ValueError) as err:
        raise ApiError(400, f"the body is not JSON ({err})", None, "invalid_json") from None


async def read_form(request: Request, limit: int) -> tuple[dict[str, list[Any]], bytes | None]:
    """The multipart fields (strings) and the bytes of ``file``, read within ``limit`` bytes."""
    if not request.headers.get("content-type", "").startswith(("multipart/form-data",
                                                               "application/x-www-form-urlencoded")):
        raise ApiError(400, "the body must be multipart/form-data with the audio in 'file'", None,
                       "invalid_content_type")
    data = await read_body(request, limit)

    async def replay() -> dict:
        return {"type": "http.request", "body": data, "more_body": False}

    try:
        form = await Request(request.scope, replay).form(max_files=1, max_fields=32,
                                                         max_part_size=1024 * 1024)
    except (HTTPException, ValueError, KeyError) as err:
        raise ApiError(400, f"the multipart body does not parse ({getattr(err, 'detail', err)})", None,
                       "invalid_form") from None
    fields: dict[str, list[Any]] = {}
    audio = None
    try:
        for key, value in form.multi_items():
            if key == "file" and not isinstance(value, str):
                audio = await value.read()
            elif isinstance(value, str):
                fields.setdefault(key, []).append(value)
            else:
                fields.setdefault(key, []).append("<a file>")
    finally:
        await form.close()
    return fields, audio


class AudioStream(Response):
    """The audio bytes as they are made: raw (``stream_format: audio``) or as SSE events."""

    def __init__(self, run: Any, watcher: asyncio.Task, fmt: str, sse: bool, request_id: str) -> None:
        super().__init__(media_type="text/event-stream" if sse else MIME[fmt])
        self.run, self.watcher, self.sse, self.request_id = run, watcher, sse, request_id
        self.raw_headers = [(k, v) for k, v in self.raw_headers if k != b"content-length"]
        self.raw_headers.append((b"cache-control", b"no-cache"))

    async def __call__(self, scope, receive, send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        try:
            while True:
                kind, value = await self.run.next()
                if kind == "data":
                    body = (_event({"type": "speech.audio.delta", "audio": base64.b64encode(value).decode()})
                            if self.sse else value)
                    await send({"type": "http.response.body", "body": body, "more_body": True})
                elif kind == "end":
                    tail = _event({"type": "speech.audio.done"}) if self.sse else b""
                    await send({"type": "http.response.body", "body": tail, "more_body": False})
                    return
                elif kind == "error":
                    log.error("serving: %s failed while streaming: %s", self.request_id, value)
                    if not self.sse:
                        raise RuntimeError(f"{self.request_id}: stream cut: {value}") from value
                    await send({"type": "http.response.body", "body": _event(
                        {"type": "error", "error": {"message": str(value), "type": "server_error"}}),
                        "more_body": False})
                    return
                else:  # the client is gone
                    log.info("serving: %s: the client went away mid-stream (%s); stopping its work",
                             self.request_id, kind)
                    return
        finally:
            self.run.cancel.set()
            self.watcher.cancel()


class JobStream(Response):
    """A native streamed job: one JSON item per line (NDJSON), as the queue handler yields them."""

    def __init__(self, run: Any, watcher: asyncio.Task, first: dict) -> None:
        super().__init__(media_type="application/x-ndjson")
        self.run, self.watcher, self.first = run, watcher, first
        self.raw_headers = [(k, v) for k, v in self.raw_headers if k != b"content-length"]

    async def __call__(self, scope, receive, send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        try:
            item: Any = self.first
            while True:
                await send({"type": "http.response.body", "body": json.dumps(item).encode() + b"\n",
                            "more_body": True})
                kind, item = await self.run.next()
                if kind != "item":
                    break
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            self.run.cancel.set()
            self.watcher.cancel()


def _event(data: dict) -> bytes:
    return b"data: " + json.dumps(data).encode() + b"\n\n"
