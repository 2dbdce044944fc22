"""Fetch a job's audio from an http(s) URL with a size cap, a whole-download deadline and SSRF checks.

Only ``http``/``https``. Every hop (the URL and each redirect target) is resolved, and unless the
policy allows private addresses the request is refused when the host resolves to a loopback, private,
link-local, shared, reserved or multicast address (a job must not reach the worker's metadata service
or neighbours). The connection goes to the address that was checked, not to a second lookup, so DNS
rebinding between check and connect does not apply. Redirects are followed by hand, at most
``max_redirects``, each re-checked. The deadline bounds connect, headers and body together: a server
that trickles bytes fails as surely as one that stalls.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
import time
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

_REDIRECTS = frozenset((301, 302, 303, 307, 308))
_CHUNK = 64 * 1024
# Content types that are certainly not audio: an HTML error page, a JSON API answer.
_NOT_AUDIO = ("text/", "application/json", "application/xml", "application/xhtml")


class FetchError(ValueError):
    """The download failed or was refused; the message names the field, the URL's host and why."""


@dataclass(frozen=True)
class FetchPolicy:
    max_bytes: int
    timeout_s: float
    max_redirects: int = 5
    allow_private: bool = False


def is_url(value: str) -> bool:
    return value[:8].lower().startswith(("http://", "https://"))


def _public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    mapped = getattr(ip, "ipv4_mapped", None)
    if mapped is not None:
        ip = mapped
    return ip.is_global and not ip.is_multicast


def _resolve(host: str, port: int, policy: FetchPolicy, field: str, remaining: float) -> str:
    del remaining  # getaddrinfo has no timeout; the OS resolver's own applies
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as err:
        raise FetchError(f"{field}: cannot resolve host {host!r}: {err}") from err
    addresses = [info[4][0] for info in infos]
    if not addresses:
        raise FetchError(f"{field}: host {host!r} has no address")
    if policy.allow_private:
        return addresses[0]
    blocked = [a for a in addresses if not _public(a)]
    if blocked:
        raise FetchError(
            f"{field}: host {host!r} resolves to a non-public address ({blocked[0]}); the worker only "
            "fetches from public addresses (set WORKER_ALLOW_PRIVATE_URLS=1 for a trusted network)")
    return addresses[0]


class _PinnedHTTP(http.client.HTTPConnection):
    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self._address, self.port), self.timeout)


class _PinnedHTTPS(http.client.HTTPSConnection):
    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self._address = address

    def connect(self) -> None:
        raw = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(raw, server_hostname=self.host)  # type: ignore[attr-defined]


def fetch(url: str, policy: FetchPolicy, field: str = "input.ref_audio") -> bytes:
    """Download ``url`` under ``policy``; raise ``FetchError`` naming ``field`` on any failure."""
    deadline = time.monotonic() + policy.timeout_s
    for _hop in range(policy.max_redirects + 1):
        response, conn = _request(url, policy, field, deadline)
        try:
            if response.status in _REDIRECTS:
                location = response.getheader("Location")
                if not location:
                    raise FetchError(f"{field}: HTTP {response.status} redirect without a Location")
                url = urljoin(url, location)
                continue
            if response.status != 200:
                raise FetchError(f"{field}: the URL answered HTTP {response.status} {response.reason}")
            return _body(response, conn, policy, field, deadline)
        finally:
            conn.close()
    raise FetchError(f"{field}: more than {policy.max_redirects} redirects")


def _request(url: str, policy: FetchPolicy, field: str, deadline: float
             ) -> tuple[http.client.HTTPResponse, http.client.HTTPConnection]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise FetchError(f"{field}: only http(s) URLs are accepted (got scheme {scheme!r})")
    host = parts.hostname
    if not host:
        raise FetchError(f"{field}: the URL has no host")
    try:
        port = parts.port or (443 if scheme == "https" else 80)
    except ValueError as err:
        raise FetchError(f"{field}: bad port in URL: {err}") from err
    remaining = _remaining(deadline, policy, field)
    address = _resolve(host, port, policy, field, remaining)
    kind = _PinnedHTTPS if scheme == "https" else _PinnedHTTP
    conn = kind(host, port, address, timeout=remaining)
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    try:
        conn.request("GET", target, headers={
            "User-Agent": "runpod-f5-tts-worker", "Accept": "audio/*, */*;q=0.5",
            "Accept-Encoding": "identity"})
        return conn.getresponse(), conn
    except (OSError, http.client.HTTPException) as err:
        conn.close()
        raise _network_error(err, host, policy, field) from err


def _body(response: http.client.HTTPResponse, conn: http.client.HTTPConnection, policy: FetchPolicy,
          field: str, deadline: float) -> bytes:
    kind = (response.getheader("Content-Type") or "").lower()
    if kind.startswith(_NOT_AUDIO):
        raise FetchError(f"{field}: the URL served {kind.split(';')[0]!r}, not audio")
    length = response.getheader("Content-Length")
    if length and length.isdigit() and int(length) > policy.max_bytes:
        raise FetchError(f"{field}: the file is {int(length)} bytes; the limit is {policy.max_bytes}")
    chunks: list[bytes] = []
    total = 0
    host = conn.host
    while True:
        remaining = _remaining(deadline, policy, field)
        if conn.sock is not None:
            conn.sock.settimeout(remaining)
        try:
            chunk = response.read1(_CHUNK)
        except (OSError, http.client.HTTPException) as err:
            raise _network_error(err, host, policy, field) from err
        if not chunk:
            break
        total += len(chunk)
        if total > policy.max_bytes:
            raise FetchError(f"{field}: the download passed the limit of {policy.max_bytes} bytes")
        chunks.append(chunk)
    _remaining(deadline, policy, field)
    return b"".join(chunks)


def _remaining(deadline: float, policy: FetchPolicy, field: str) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise FetchError(f"{field}: the download took longer than {policy.timeout_s:g} s")
    return left


def _network_error(err: Exception, host: str, policy: FetchPolicy, field: str) -> FetchError:
    if isinstance(err, TimeoutError | socket.timeout):
        return FetchError(f"{field}: the download took longer than {policy.timeout_s:g} s")
    return FetchError(f"{field}: could not download from {host!r}: {err}")
