"""worker.jobs.urlfetch against real sockets on 127.0.0.1: one deadline bounds the whole exchange wherever
a server starts to trickle (status line, headers, chunk framing, body, a redirect, the TLS handshake),
and every IPv6 form that carries a private IPv4 address is refused like that address."""

from __future__ import annotations

import ipaddress
import socket
import threading
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jobkit import AudioServer, audio_bytes, voice_like

from worker.jobs.urlfetch import FetchPolicy, UrlFetchError, fetch, is_public_address

DEADLINE_S = 0.5
TRICKLE_DELAY_S = 0.1  # one byte every 0.1 s once the trickle starts
# What is left after the trickle point takes at least this long to send at that rate: a fetch that
# honours its deadline hangs up long before the server is through.
TRICKLE_TAIL = 300
POLICY = FetchPolicy(max_bytes=1_000_000, timeout_s=DEADLINE_S, max_redirects=3, allow_private=True)


@dataclass
class _Connection:
    fast: int = 0  # bytes sent at full speed
    slow: int = 0  # bytes sent one at a time before the client went away
    finished: bool = False  # the server got through the whole script
    done: threading.Event = field(default_factory=threading.Event)


class ScriptServer:
    """A raw TCP server: each connection gets the next scripted response, sent at full speed up to
    its trickle point and then one byte per TRICKLE_DELAY_S until the client goes away."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.scripts: list[tuple[bytes, int]] = []
        self.connections: list[_Connection] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return self.sock.getsockname()[1]

    def url(self, path: str = "/a.wav", scheme: str = "http") -> str:
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            script, point = self.scripts.pop(0) if self.scripts else (b"", 0)
            conn = _Connection()
            self.connections.append(conn)
            threading.Thread(target=self._talk, args=(client, script, point, conn), daemon=True).start()

    def _talk(self, client: socket.socket, script: bytes, point: int, conn: _Connection) -> None:
        try:
            client.settimeout(5)
            if point:  # a real client speaks first; the TLS test's client does too
                client.recv(65536)
            client.sendall(script[:point])
            conn.fast = point
            for i in range(point, len(script)):
                if self._stop.wait(TRICKLE_DELAY_S):
                    return
                client.sendall(script[i:i + 1])
                conn.slow += 1
            conn.finished = True
        except OSError:
            pass
        finally:
            client.close()
            conn.done.set()

    def close(self) -> None:
        self._stop.set()
        self.sock.close()


@pytest.fixture
def server():
    running = ScriptServer()
    yield running
    running.close()


def _headers(lines: list[str]) -> bytes:
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _chunked(body: bytes, sizes: list[int], extension: bool) -> bytes:
    out, at = b"", 0
    for size in sizes:
        piece = body[at:at + size]
        if not piece:
            break
        ext = ";name=value" if extension else ""
        out += f"{len(piece):x}{ext}\r\n".encode() + piece + b"\r\n"
        at += len(piece)
    if at < len(body):
        out += f"{len(body) - at:x}\r\n".encode() + body[at:] + b"\r\n"
    return out + b"0\r\nX-Trailer: yes\r\n\r\n"


@st.composite
def responses(draw) -> tuple[bytes, int, str]:
    """A well-formed HTTP/1.1 200 response (length-framed or chunked) and a point where it starts to
    trickle, anywhere from the first byte of the status line to TRICKLE_TAIL bytes before the end."""
    body = bytes(draw(st.binary(min_size=TRICKLE_TAIL + 20, max_size=TRICKLE_TAIL + 600)))
    extra = [f"X-Pad-{i}: {'v' * draw(st.integers(0, 60))}" for i in range(draw(st.integers(0, 4)))]
    if draw(st.booleans()):
        sizes = draw(st.lists(st.integers(1, 200), min_size=1, max_size=8))
        head = _headers(["HTTP/1.1 200 OK", "Content-Type: audio/wav", "Transfer-Encoding: chunked", *extra])
        framed = head + _chunked(body, sizes, draw(st.booleans()))
        kind = "chunked"
    else:
        head = _headers(["HTTP/1.1 200 OK", "Content-Type: audio/wav", f"Content-Length: {len(body)}",
                         *extra])
        framed = head + body
        kind = "length"
    where = draw(st.sampled_from(["status", "headers", "body", "anywhere"]))
    last = len(framed) - TRICKLE_TAIL
    span = {"status": (0, 17), "headers": (17, len(head)), "body": (len(head), last),
            "anywhere": (0, last)}[where]
    low, high = span[0], max(span[0], min(span[1], last))
    return framed, draw(st.integers(low, high)), f"{kind}/{where}"


def _assert_cut_at_the_deadline(server: ScriptServer, err: UrlFetchError) -> None:
    message = str(err)
    assert "took longer than 0.5 s" in message and "WORKER_URL_TIMEOUT_S" in message, message
    conn = server.connections[-1]
    assert conn.done.wait(10), "the server never noticed the client hang up"
    # The client hung up long before the server got through the trickled tail (TRICKLE_TAIL bytes,
    # 30 s at the trickle rate): it gave up at its deadline, not when the server was done.
    assert not conn.finished and conn.slow < TRICKLE_TAIL // 2, (conn.slow, message)


@settings(max_examples=24, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=responses())
def test_a_trickle_anywhere_is_cut_at_the_deadline(server: ScriptServer, case) -> None:
    script, point, _kind = case
    server.scripts.append((script, point))
    with pytest.raises(UrlFetchError) as caught:
        fetch(server.url(), POLICY)
    _assert_cut_at_the_deadline(server, caught.value)


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=responses(), redirects=st.integers(1, 3))
def test_redirects_share_the_one_deadline(server: ScriptServer, case, redirects: int) -> None:
    # Each hop is quick but the last trickles: the deadline started at the first hop.
    for _ in range(redirects):
        hop = _headers(["HTTP/1.1 302 Found", "Location: /next.wav", "Content-Length: 0"])
        server.scripts.append((hop, len(hop)))
    script, point, _kind = case
    server.scripts.append((script, point))
    with pytest.raises(UrlFetchError) as caught:
        fetch(server.url(), POLICY)
    _assert_cut_at_the_deadline(server, caught.value)


def test_a_quick_response_still_arrives_whole(server: ScriptServer) -> None:
    body = b"RIFF" + bytes(range(256)) * 8
    chunked = _headers(["HTTP/1.1 200 OK", "Transfer-Encoding: chunked"]) + _chunked(body, [7, 300], True)
    server.scripts.append((chunked, len(chunked)))
    assert fetch(server.url(), POLICY) == body


def test_a_trickled_tls_handshake_is_cut_at_the_deadline(server: ScriptServer) -> None:
    # A TLS record header announcing a ServerHello that never finishes arriving.
    hello = b"\x16\x03\x03\x40\x00\x02" + b"\x00" * (TRICKLE_TAIL * 2)
    server.scripts.append((hello, 1))
    with pytest.raises(UrlFetchError, match="TLS handshake") as caught:
        fetch(server.url(scheme="https"), POLICY)
    _assert_cut_at_the_deadline(server, caught.value)


def test_a_status_line_that_never_ends_is_cut_at_the_deadline(server: ScriptServer) -> None:
    server.scripts.append((b"H" * (TRICKLE_TAIL * 2), 0))
    with pytest.raises(UrlFetchError, match="status line and headers") as caught:
        fetch(server.url(), POLICY)
    _assert_cut_at_the_deadline(server, caught.value)


def test_non_ascii_and_unsafe_characters_in_the_path_are_percent_encoded() -> None:
    wav = audio_bytes(voice_like(0.2, 8000), 8000)
    with AudioServer() as audio_server:
        audio_server.file("/caf%C3%A9%20noir.wav", wav)
        assert fetch(audio_server.url("/café noir.wav"), POLICY) == wav
        # A CR/LF in the URL cannot inject a header: it travels percent-encoded.
        with pytest.raises(UrlFetchError, match="HTTP 404"):
            fetch(audio_server.url("/x.wav\r\nX-Injected: 1"), POLICY)


# ------------------------------------------------------------------ addresses
PRIVATE_V4 = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "127.0.0.0/8", "169.254.0.0/16",
              "100.64.0.0/10", "0.0.0.0/8", "224.0.0.0/4", "240.0.0.0/4"]


def _in(net: str) -> st.SearchStrategy[ipaddress.IPv4Address]:
    network = ipaddress.ip_network(net)
    return st.integers(0, network.num_addresses - 1).map(lambda i: network[i])


v4_private = st.one_of(*[_in(net) for net in PRIVATE_V4])
v4_any = st.integers(0, 2**32 - 1).map(ipaddress.IPv4Address)


def _embeddings(v4: ipaddress.IPv4Address) -> dict[str, str]:
    n = int(v4)
    return {
        "mapped": f"::ffff:{v4}",
        "compatible": str(ipaddress.IPv6Address(n)),
        "translated": str(ipaddress.IPv6Address((0xFFFF << 32) | n)),
        "nat64": str(ipaddress.IPv6Address((0x64FF9B << 96) | n)),
        "6to4": str(ipaddress.IPv6Address((0x2002 << 112) | (n << 80) | 1)),
    }


@settings(max_examples=200)
@given(v4=v4_private)
def test_every_ipv6_form_of_a_private_ipv4_address_is_private(v4) -> None:
    assert not is_public_address(str(v4))
    for form, address in _embeddings(v4).items():
        assert not is_public_address(address), (form, address)


@settings(max_examples=200)
@given(v4=v4_any)
def test_an_embedded_ipv4_address_is_judged_like_the_address_itself(v4) -> None:
    for form, address in _embeddings(v4).items():
        if form != "compatible" or int(v4) > 1:  # :: and ::1 are the IPv6 unspecified/loopback
            assert is_public_address(address) == is_public_address(str(v4)), (form, address)


def test_local_use_nat64_and_teredo_to_private_hosts_are_private() -> None:
    assert not is_public_address("64:ff9b:1::a00:1")
    assert not is_public_address("2001:0:4136:e378:8000:63bf:f5ff:fffe")  # Teredo client 10.0.0.1
    assert is_public_address("2606:4700:4700::1111") and is_public_address("8.8.8.8")


@pytest.mark.parametrize("host", ["[64:ff9b::a9fe:a9fe]", "[2002:a00:1::1]", "[::10.0.0.1]",
                                  "[::ffff:0:127.0.0.1]", "[64:ff9b::7f00:1]"])
def test_urls_to_embedded_private_addresses_are_refused_before_connecting(host: str) -> None:
    strict = FetchPolicy(max_bytes=1000, timeout_s=2.0)
    with pytest.raises(UrlFetchError, match="non-public address"):
        fetch(f"http://{host}/latest/meta-data", strict)


@pytest.fixture
def tls_server(tmp_path, monkeypatch):
    """An HTTPS server on 127.0.0.1 with a throwaway self-signed certificate the client trusts (through
    SSL_CERT_FILE, which the default context reads), serving chunked and length-framed bodies."""
    import shutil
    import ssl
    import subprocess
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    if shutil.which("openssl") is None:
        pytest.skip("no openssl CLI to make a test certificate")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
                    "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    body = bytes(range(256)) * 400

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "audio/wav")
            if self.path == "/chunked.wav":
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for i in range(0, len(body), 7000):
                    piece = body[i:i + 7000]
                    self.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                self.wfile.write(b"0\r\n\r\n")
            else:
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"https://127.0.0.1:{httpd.server_address[1]}", body
    httpd.shutdown()
    httpd.server_close()


def test_https_bodies_arrive_whole_through_the_bounded_socket(tls_server) -> None:
    base, body = tls_server
    assert fetch(base + "/plain.wav", POLICY) == body
    assert fetch(base + "/chunked.wav", POLICY) == body
