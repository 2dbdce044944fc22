"""Transport: http(s) and file:// reads with Range, redirects, an optional token and a retry policy.

The token goes only to the host of the manifest URL (e.g. api.github.com), as an *unredirected*
header: urllib never copies it onto a redirect (GitHub sends release assets to another host, with a
signed URL that must not see the token). The retry policy is an immutable value, apart from I/O;
callers own the loop because a resumable read restarts at a new offset each time.
"""

from __future__ import annotations

import contextlib
import email.utils
import http.client
import logging
import random
import socket
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import BinaryIO

from .errors import BootstrapError

log = logging.getLogger("fetch")

CHUNK = 1 << 20
_RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
USER_AGENT = "runpod-f5-tts-bootstrap/1"


class FetchError(BootstrapError):
    def __init__(self, message: str, remedy: str = "", *, retryable: bool = False,
                 status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__("fetch", message, remedy, retryable=retryable)
        self.status = status
        self.retry_after = retry_after


@dataclass(frozen=True)
class RetryPolicy:
    """Capped exponential backoff with jitter; what to retry is decided by ``FetchError.retryable``."""

    attempts: int = 8
    backoff_s: float = 0.5
    backoff_max_s: float = 30.0
    jitter: float = 0.5  # each delay is scaled by a random factor in [1 - jitter, 1]

    def delay(self, attempt: int, retry_after: float | None = None,
              rng: random.Random | None = None) -> float:
        """Seconds to wait before attempt ``attempt + 1`` (``attempt`` counts from 1)."""
        base = min(self.backoff_max_s, self.backoff_s * (2 ** max(0, attempt - 1)))
        base *= 1.0 - self.jitter * (rng or random).random()
        if retry_after is not None:
            base = max(base, min(retry_after, self.backoff_max_s))
        return base

    def should_retry(self, error: FetchError, attempt: int) -> bool:
        return error.retryable and attempt < self.attempts


@dataclass(frozen=True)
class Body:
    """An open response: ``offset`` is where its bytes start (0 when the server ignored Range)."""

    stream: BinaryIO
    offset: int
    length: int | None  # bytes this body should deliver, when known
    url: str

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.stream.close()


@dataclass(frozen=True)
class Transport:
    token: str | None = None
    token_host: str | None = None  # the only host that may see the token
    timeout_s: float = 60.0
    policy: RetryPolicy = RetryPolicy()

    def open(self, url: str, offset: int = 0) -> Body:
        """One attempt: open ``url`` at ``offset``. Raises ``FetchError`` (``retryable`` when it is)."""
        scheme = urllib.parse.urlsplit(url).scheme
        if scheme == "file":
            return _open_file(url, offset)
        if scheme not in ("http", "https"):
            raise FetchError(f"unsupported URL scheme {scheme!r} in {url}", "use http(s):// or file://")
        return self._open_http(url, offset)

    def _open_http(self, url: str, offset: int) -> Body:
        req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT,
                                                   "Accept": "application/octet-stream"})
        if offset:
            req.add_header("Range", f"bytes={offset}-")
        host = urllib.parse.urlsplit(url).hostname
        if self.token and host and host == self.token_host:
            req.add_unredirected_header("Authorization", f"Bearer {self.token}")
        try:
            resp = urllib.request.urlopen(req, timeout=self.timeout_s)
        except urllib.error.HTTPError as exc:
            raise _http_error(url, exc) from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            raise _connection_error(url, exc) from None
        length = resp.headers.get("Content-Length")
        start = 0
        if resp.status == 206:
            start = _content_range_start(resp.headers.get("Content-Range"))
            if start != offset:
                resp.close()
                raise FetchError(f"{url}: asked for bytes from {offset}, server sent from {start}",
                                 retryable=True)
        return Body(resp, start, int(length) if length and length.isdigit() else None, resp.geturl())

    def read_small(self, url: str, limit: int = 16 << 20) -> bytes:
        """Read a small document (the manifest) whole, with retries."""
        attempt = 0
        while True:
            attempt += 1
            try:
                body = self.open(url)
                try:
                    data = _read_exact_or_less(body.stream, limit + 1)
                finally:
                    body.close()
                if len(data) > limit:
                    raise FetchError(f"{url} is larger than {limit} bytes: not a manifest",
                                     "check the manifest URL")
                if body.length is not None and len(data) != body.length:
                    raise FetchError(f"{url}: short read ({len(data)} of {body.length} bytes)",
                                     retryable=True)
                return data
            except FetchError as exc:
                if not self.policy.should_retry(exc, attempt):
                    raise
                wait = self.policy.delay(attempt, exc.retry_after)
                log.warning("retry %d/%d in %.1f s: %s", attempt, self.policy.attempts - 1, wait, exc.message)
                time.sleep(wait)


def read_chunk(body: Body, size: int = CHUNK) -> bytes:
    """What has arrived, up to ``size`` (``read1``: never waits to fill the whole chunk, so a slow
    server still feeds the extractor and a cancelled download stops at once); transport failures
    become retryable ``FetchError``."""
    try:
        read1 = getattr(body.stream, "read1", None)
        return read1(size) if read1 is not None else body.stream.read(size)
    except (OSError, http.client.HTTPException, ValueError) as exc:
        raise _connection_error(body.url, exc) from None


def _read_exact_or_less(stream: BinaryIO, n: int) -> bytes:
    out = bytearray()
    try:
        while len(out) < n and (chunk := stream.read(min(CHUNK, n - len(out)))):
            out += chunk
    except (OSError, http.client.HTTPException) as exc:
        raise FetchError(f"read failed: {exc}", retryable=True) from None
    return bytes(out)


def _open_file(url: str, offset: int) -> Body:
    path = urllib.request.url2pathname(urllib.parse.urlsplit(url).path)
    try:
        fh = open(path, "rb")
    except FileNotFoundError:
        raise FetchError(f"{path} does not exist", "check the URL and that every part was published",
                         status=404) from None
    except OSError as exc:
        raise FetchError(f"could not open {path}: {exc.strerror}",
                         "check the path and its permissions") from None
    size = fh.seek(0, 2)
    fh.seek(min(offset, size))
    return Body(fh, min(offset, size), size - min(offset, size), url)


def _content_range_start(value: str | None) -> int:
    # "bytes 100-199/200"
    try:
        return int((value or "").split()[1].split("-")[0])
    except (IndexError, ValueError):
        return -1


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    if value.strip().isdigit():
        return float(value)
    with contextlib.suppress(TypeError, ValueError):
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, when.timestamp() - time.time())
    return None


def _http_error(url: str, exc: urllib.error.HTTPError) -> FetchError:
    code = exc.code
    with contextlib.suppress(Exception):
        exc.close()
    shown = urllib.parse.urlsplit(url)._replace(query="").geturl()  # signed URLs: keep secrets out of logs
    if code in _RETRY_STATUS or code >= 500:
        return FetchError(f"{shown}: HTTP {code}", "the server is failing; it was retried",
                          retryable=True, status=code,
                          retry_after=_retry_after(exc.headers.get("Retry-After")))
    if code in (401, 403):
        return FetchError(f"{shown}: HTTP {code} (access denied)",
                          "for a private repository set GITHUB_TOKEN to a token that can read its releases",
                          status=code)
    if code == 404:
        return FetchError(f"{shown}: HTTP 404 (not found)",
                          "check MANIFEST_URL and that every part of the release was uploaded", status=code)
    if code == 416:
        return FetchError(f"{shown}: HTTP 416 (range not satisfiable)", retryable=True, status=code)
    return FetchError(f"{shown}: HTTP {code}", "check the URL", status=code)


def _connection_error(url: str, exc: BaseException) -> FetchError:
    reason = getattr(exc, "reason", exc)
    shown = urllib.parse.urlsplit(url)._replace(query="").geturl()
    if isinstance(reason, ssl.SSLCertVerificationError):
        return FetchError(f"{shown}: TLS certificate rejected: {reason}",
                          "the image needs CA certificates (ca-certificates)")
    if isinstance(reason, socket.gaierror):
        return FetchError(f"{shown}: cannot resolve host: {reason}", "check the URL and the network",
                          retryable=True)
    return FetchError(f"{shown}: {type(reason).__name__}: {reason}",
                      "check that the URL (MANIFEST_URL; parts sit beside the manifest) is right and its "
                      "host is reachable from the worker; the next start retries", retryable=True)
