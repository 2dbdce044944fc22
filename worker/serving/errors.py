"""Errors in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}`` with an HTTP status.

``param`` names the request field at fault as the caller sent it (``input``, ``voice``, ``file``...), so an
OpenAI client's ``BadRequestError`` says what to fix. Status: 400 for a bad field, 404 for an unknown
route, 413 for a body over the limit, 429 when the worker is full (with ``Retry-After``), 499-style
client disconnects are never answered, 500 for a fault, 503 while loading or after a failed start, 504
past the job deadline.

Both are ``WorkerError``s (worker/errors.py): an ``ApiError``'s ``where`` is its ``param`` (``request``
when the request as a whole is at fault), a ``Cancelled``'s is ``client``.
"""

from __future__ import annotations

from worker.errors import Issue, JobError, WorkerError

TYPES = {400: "invalid_request_error", 404: "not_found_error", 405: "invalid_request_error",
         413: "invalid_request_error", 415: "invalid_request_error", 429: "rate_limit_error"}


class ApiError(WorkerError):
    """An answer of the http mode other than 200: the status, the message the caller reads (it names its
    fields already), the field at fault, OpenAI's ``code`` and extra headers (``Retry-After``)."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        self.init(Issue(param or "request", message))
        Exception.__init__(self, message)  # str() is the message as the caller reads it
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers: dict[str, str] = dict(headers or {})

    @property
    def type(self) -> str:
        return TYPES.get(self.status, "invalid_request_error" if self.status < 500 else "server_error")

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class Cancelled(JobError):
    """The client went away: the work stops at its next check (an ODE step, a batch, a stage)."""


def bad(param: str | None, message: str, code: str | None = None) -> ApiError:
    """A 400 naming the field."""
    return ApiError(400, message, param, code or "invalid_value")
