"""Fetch a job's audio from an http(s) URL with a size cap, a whole-download deadline and SSRF checks.

Only ``http``/``https``. Every hop (the URL and each redirect target) is resolved, and unless the
policy allows private addresses the request is refused when the host resolves to a loopback, private,
link-local, shared, reserved or multicast address (a job must not reach the worker's metadata service
or neighbours). The connection goes to the address that was checked, not to a second lookup, so DNS
rebinding between check and connect does not apply. IPv6 forms that carry an IPv4 address (mapped,
IPv4-compatible, SIIT, NAT64 ``64:ff9b::/96``, 6to4 ``2002::/16``, Teredo) are judged by that address,
so ``[64:ff9b::a00:1]`` is as private as ``10.0.0.1``. Redirects are followed by hand, at most
``max_redirects``, each re-checked.

One deadline (``timeout_s``, WORKER_URL_TIMEOUT_S) bounds the whole exchange: the lookup, connect, TLS
handshake, request, status line, headers, chunked framing, body and every redirect. Every socket
operation waits at most for the time that is left (``_BoundedSocket``), so a server that trickles one
byte a second anywhere fails at the deadline as surely as one that stalls.
"""

from __future__ import annotations

import http.client
import io
import ipaddress
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from urllib.parse import quote, urljoin, urlsplit

from worker.errors import UrlFetchError

_REDIRECTS = frozenset((301, 302, 303, 307, 308))
_CHUNK = 64 * 1024
# Content types that are certainly not audio: an HTML error page, a JSON API answer.
_NOT_AUDIO = ("text/", "application/json", "application/xml", "application/xhtml")
# Printable ASCII a request target may carry as it is; anything else (non-ASCII, spaces, controls) is
# percent-encoded, so no byte of a job's URL can break the request line.
_TARGET_SAFE = "!#$%&'()*+,/:;=?@[]~"
# IPv6 ranges whose low 32 bits are an IPv4 address the packet ends up at.
_EMBEDS_IPV4 = tuple(ipaddress.ip_network(n) for n in (
    "::/96",           # IPv4-compatible (deprecated, still routed by some stacks)
    "::ffff:0:0/96",   # IPv4-mapped
    "::ffff:0:0:0/96",  # IPv4-translated (SIIT)
    "64:ff9b::/96",    # NAT64 well-known prefix
))
# Local-use NAT64 (RFC 8215): translated by the operator's own gateway, so never public.
_LOCAL_NAT64 = ipaddress.ip_network("64:ff9b:1::/48")


@dataclass(frozen=True)
class FetchPolicy:
    max_bytes: int
    timeout_s: float
    max_redirects: int = 5
    allow_private: bool = False


def is_url(value: str) -> bool:
    return value[:8].lower().startswith(("http://", "https://"))


def is_public_address(address: str) -> bool:
    """True for an address a job may make the worker connect to: globally routed, not multicast, and,
    for IPv6 forms that carry an IPv4 address, that IPv4 address public too."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        if ip in _LOCAL_NAT64:
            return False
        embedded = [ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
                    for net in _EMBEDS_IPV4 if ip in net]
        if ip.sixtofour is not None:
            embedded.append(ip.sixtofour)
        if ip.teredo is not None:
            embedded.extend(ip.teredo)
        if embedded:
            return all(is_public_address(str(v4)) for v4 in embedded)
    return ip.is_global and not ip.is_multicast


class _Deadline:
    """The one deadline of a whole fetch; ``left`` raises ``TimeoutError`` once it has passed."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.end = time.monotonic() + seconds
        self.stage = "starting"

    def left(self) -> float:
        remaining = self.end - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"deadline of {self.seconds:g} s passed")
        return remaining


class _BoundedSocket:
    """A socket (plain or TLS) whose every blocking call waits at most until the deadline.

    http.client reads the status line, headers, chunk sizes and body through ``makefile``; those reads
    land in ``recv_into`` here, which sets the socket's timeout to the time left before each call. A
    peer that sends one byte per call therefore cannot stretch the exchange past the deadline. Close
    semantics mirror ``socket.socket``: the real socket closes once it and every file made from it
    are closed (http.client hands the connection to the response that way).
    """

    def __init__(self, sock: socket.socket, deadline: _Deadline) -> None:
        self._sock = sock
        self._deadline = deadline
        self._io_refs = 0
        self._closed = False

    def _arm(self) -> None:
        self._sock.settimeout(self._deadline.left())

    def recv_into(self, buffer, nbytes: int = 0, flags: int = 0) -> int:
        self._arm()
        # 0 means "the whole buffer" for a plain socket; an SSLSocket wants the size spelled out.
        return self._sock.recv_into(buffer, nbytes or memoryview(buffer).nbytes, flags)

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        self._arm()
        return self._sock.recv(bufsize, flags)

    def send(self, data, flags: int = 0) -> int:
        self._arm()
        return self._sock.send(data, flags)

    def sendall(self, data, flags: int = 0) -> None:
        view = memoryview(data).cast("B")
        while view:
            view = view[self.send(view, flags):]

    def makefile(self, mode: str = "r", buffering: int | None = None, **_: object):
        if mode not in ("r", "rb"):
            raise ValueError(f"unsupported mode {mode!r}")
        self._io_refs += 1
        return io.BufferedReader(socket.SocketIO(self, "rb"),  # type: ignore[arg-type]
                                 buffering if buffering and buffering > 0 else io.DEFAULT_BUFFER_SIZE)

    def _decref_socketios(self) -> None:
        self._io_refs = max(0, self._io_refs - 1)
        if self._closed and self._io_refs == 0:
            self._sock.close()

    def close(self) -> None:
        self._closed = True
        if self._io_refs == 0:
            self._sock.close()

    def fileno(self) -> int:
        return self._sock.fileno()

    def settimeout(self, _timeout: float | None) -> None:
        """http.client sets per-operation timeouts; ignored: the whole-download deadline decides."""

    def setsockopt(self, *args: object) -> None:
        self._sock.setsockopt(*args)  # type: ignore[arg-type]


def _resolve(host: str, port: int, policy: FetchPolicy, field: str, deadline: _Deadline) -> str:
    deadline.stage = f"resolving {host!r}"
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)  # a literal: no lookup
    except ValueError:
        infos = _lookup(host, port, field, deadline)
    except (socket.gaierror, UnicodeError) as err:
        raise UrlFetchError(field, f"cannot resolve host {host!r}: {err}") from err
    addresses = [info[4][0] for info in infos]
    if not addresses:
        raise UrlFetchError(field, f"host {host!r} has no address")
    if policy.allow_private:
        return addresses[0]
    blocked = [a for a in addresses if not is_public_address(a)]
    if blocked:
        raise UrlFetchError(
            field, f"host {host!r} resolves to a non-public address ({blocked[0]}); the worker only "
            "fetches from public addresses (set WORKER_ALLOW_PRIVATE_URLS=1 for a trusted network)")
    return addresses[0]


def _lookup(host: str, port: int, field: str, deadline: _Deadline) -> list:
    """getaddrinfo has no timeout of its own: run it aside and stop waiting at the deadline."""
    found: dict[str, object] = {}

    def work() -> None:
        try:
            found["infos"] = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as err:
            found["error"] = err

    worker = threading.Thread(target=work, name="resolve", daemon=True)
    worker.start()
    worker.join(deadline.left())
    if worker.is_alive():
        raise TimeoutError(f"lookup of {host!r}")
    if "error" in found:
        raise UrlFetchError(field, f"cannot resolve host {host!r}: {found['error']}")
    return found["infos"]  # type: ignore[return-value]


class _PinnedHTTP(http.client.HTTPConnection):
    def __init__(self, host: str, port: int, address: str, deadline: _Deadline) -> None:
        super().__init__(host, port)
        self._address = address
        self._deadline = deadline

    def _tcp(self) -> socket.socket:
        self._deadline.stage = "connecting"
        return socket.create_connection((self._address, self.port), self._deadline.left())

    def connect(self) -> None:
        self.sock = _BoundedSocket(self._tcp(), self._deadline)  # type: ignore[assignment]


class _PinnedHTTPS(_PinnedHTTP):
    default_port = 443

    def connect(self) -> None:
        raw = self._tcp()
        try:
            self._deadline.stage = "in the TLS handshake"
            # CPython bounds a whole blocking handshake by the socket's timeout: the time left.
            raw.settimeout(self._deadline.left())
            tls = ssl.create_default_context().wrap_socket(raw, server_hostname=self.host)
        except BaseException:
            raw.close()
            raise
        self.sock = _BoundedSocket(tls, self._deadline)  # type: ignore[assignment]


def fetch(url: str, policy: FetchPolicy, field: str = "input.ref_audio") -> bytes:
    """Download ``url`` under ``policy``; raise ``UrlFetchError`` naming ``field`` on any failure."""
    deadline = _Deadline(policy.timeout_s)
    try:
        return _fetch(url, policy, field, deadline)
    except TimeoutError as err:
        raise _too_slow(policy, field, deadline) from err
    except UnicodeError as err:
        raise UrlFetchError(field, f"the URL cannot be sent ({err.__class__.__name__}: {err})") from err


def _fetch(url: str, policy: FetchPolicy, field: str, deadline: _Deadline) -> bytes:
    for _hop in range(policy.max_redirects + 1):
        response, conn = _request(url, policy, field, deadline)
        try:
            if response.status in _REDIRECTS:
                location = response.getheader("Location")
                if not location:
                    raise UrlFetchError(field, f"HTTP {response.status} redirect without a Location")
                url = urljoin(url, location)
                continue
            if response.status != 200:
                raise UrlFetchError(field, f"the URL answered HTTP {response.status} {response.reason}")
            return _body(response, conn, policy, field, deadline)
        finally:
            conn.close()
    raise UrlFetchError(field, f"more than {policy.max_redirects} redirects")


def _request(url: str, policy: FetchPolicy, field: str, deadline: _Deadline
             ) -> tuple[http.client.HTTPResponse, http.client.HTTPConnection]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise UrlFetchError(field, f"only http(s) URLs are accepted (got scheme {scheme!r})")
    host = parts.hostname
    if not host:
        raise UrlFetchError(field, "the URL has no host")
    try:
        port = parts.port or (443 if scheme == "https" else 80)
    except ValueError as err:
        raise UrlFetchError(field, f"bad port in URL: {err}") from err
    address = _resolve(host, port, policy, field, deadline)
    kind = _PinnedHTTPS if scheme == "https" else _PinnedHTTP
    conn = kind(host, port, address, deadline)
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    try:
        conn.request("GET", quote(target, safe=_TARGET_SAFE), headers={
            "User-Agent": "runpod-f5-tts-worker", "Accept": "audio/*, */*;q=0.5",
            "Accept-Encoding": "identity"})
        deadline.stage = "waiting for the status line and headers"
        return conn.getresponse(), conn
    except (OSError, http.client.HTTPException) as err:
        conn.close()
        raise _network_error(err, host, policy, field, deadline) from err


def _body(response: http.client.HTTPResponse, conn: http.client.HTTPConnection, policy: FetchPolicy,
          field: str, deadline: _Deadline) -> bytes:
    kind = (response.getheader("Content-Type") or "").lower()
    if kind.startswith(_NOT_AUDIO):
        raise UrlFetchError(field, f"the URL served {kind.split(';')[0]!r}, not audio")
    length = response.getheader("Content-Length")
    if length and length.isdigit() and int(length) > policy.max_bytes:
        raise UrlFetchError(field, f"the file is {int(length)} bytes; the limit is {policy.max_bytes}")
    chunks: list[bytes] = []
    total = 0
    host = conn.host
    deadline.stage = "reading the body"
    while True:
        deadline.left()
        try:
            chunk = response.read1(_CHUNK)
        except (OSError, http.client.HTTPException) as err:
            raise _network_error(err, host, policy, field, deadline) from err
        if not chunk:
            break
        total += len(chunk)
        if total > policy.max_bytes:
            raise UrlFetchError(field, f"the download passed the limit of {policy.max_bytes} bytes")
        chunks.append(chunk)
    deadline.left()
    return b"".join(chunks)


def _too_slow(policy: FetchPolicy, field: str, deadline: _Deadline) -> UrlFetchError:
    return UrlFetchError(field, f"the download took longer than {policy.timeout_s:g} s "
                      f"(WORKER_URL_TIMEOUT_S; stopped while {deadline.stage}); use a faster host or "
                      "send the audio as base64")


def _network_error(err: Exception, host: str, policy: FetchPolicy, field: str,
                   deadline: _Deadline) -> UrlFetchError:
    if isinstance(err, TimeoutError):
        return _too_slow(policy, field, deadline)
    return UrlFetchError(field, f"could not download from {host!r}: {err}")
