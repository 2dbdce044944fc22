"""Fixtures for the installer tests: real artifacts (tar -> zstd -> parts + manifest) and a real HTTP
server on 127.0.0.1 that speaks Range and can misbehave on purpose (drops, 5xx, slowness, a corrupted
byte on first delivery, missing parts, redirects), counting every byte it serves."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import zstandard

from artifact.manifest import MANIFEST_NAME, Archive, Part, make_manifest

ROOT = Path(__file__).resolve().parents[2]
PLACEHOLDER = "/opt/placeholder-prefix-" + "x" * 40

# A conda-unpack stand-in that behaves like the real one: the new prefix is its own location.
CONDA_UNPACK = f"""\
import os, sys
prefix = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for rel in ("etc/config.txt", "bin/tool"):
    path = os.path.join(prefix, rel)
    with open(path) as fh:
        text = fh.read()
    with open(path, "w") as fh:
        fh.write(text.replace({PLACEHOLDER!r}, prefix))
print("relocated to", prefix)
"""

# bin/python: a real interpreter that reports what it was started with, instead of running the worker.
PYTHON_SHIM = f"""#!/bin/sh
cd /
exec {sys.executable} -c 'import importlib.util, json, os, sys
print(json.dumps({{"argv": sys.argv[1:], "env": dict(os.environ),
                   "worker_origin": importlib.util.find_spec("worker").origin}}))' "$@"
"""


def tiny_env_files(n_files: int = 40, with_unpack: bool = True, big: int = 0) -> dict[str, bytes | tuple]:
    """name -> bytes (a file, mode 0644), or ("link", target), ("dir",), ("exec", bytes)."""
    files: dict[str, Any] = {
        "bin/python": ("exec", PYTHON_SHIM.encode()),
        "bin/tool": ("exec", f"#!/bin/sh\necho {PLACEHOLDER}\n".encode()),
        "etc/config.txt": f"prefix={PLACEHOLDER}\n".encode(),
        "etc/conda/activate.d/demo.sh": b"export DEMO_ACTIVATED=yes-from-activate-d\n",
        "lib/python3.11/site-packages/pkg/__init__.py": b"VALUE = 1\n",
        "lib/libdemo.so.1": os.urandom(3000),
        "lib/libdemo.so": ("link", "libdemo.so.1"),
        "share/empty": ("dir",),
    }
    if with_unpack:
        files["bin/conda-unpack"] = ("exec", CONDA_UNPACK.encode())
    for i in range(n_files):
        files[f"lib/python3.11/site-packages/pkg/mod_{i:04d}.py"] = (f"X = {i}\n" * (i % 50 + 1)).encode()
    if big:
        files["lib/big.bin"] = os.urandom(big)
    return files


def build_tar(files: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        dirs: set[str] = set()
        for name in sorted(files):
            parts = name.split("/")
            for i in range(1, len(parts)):
                d = "/".join(parts[:i])
                if d not in dirs:
                    dirs.add(d)
                    tar.addfile(_info(d, tarfile.DIRTYPE, 0o755))
            spec = files[name]
            if isinstance(spec, bytes):
                tar.addfile(_info(name, tarfile.REGTYPE, 0o644, len(spec)), io.BytesIO(spec))
            elif spec[0] == "exec":
                tar.addfile(_info(name, tarfile.REGTYPE, 0o755, len(spec[1])), io.BytesIO(spec[1]))
            elif spec[0] == "link":
                info = _info(name, tarfile.SYMTYPE, 0o777)
                info.linkname = spec[1]
                tar.addfile(info)
            elif spec[0] == "dir":
                dirs.add(name)
                tar.addfile(_info(name, tarfile.DIRTYPE, 0o755))
    return buf.getvalue()


def _info(name: str, kind: bytes, mode: int, size: int = 0) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.size, info.mtime = kind, mode, size, 1_700_000_000
    return info


@dataclass
class Artifact:
    dir: Path
    manifest_path: Path
    manifest: Any
    tar: bytes
    data: bytes  # the compressed stream
    files: dict[str, Any] = field(default_factory=dict)

    @property
    def manifest_sha256(self) -> str:
        return hashlib.sha256(self.manifest_path.read_bytes()).hexdigest()

    @property
    def env_id(self) -> str:
        return self.manifest.env_id


def write_artifact(out: Path, tar_bytes: bytes, part_size: int = 20_000, env_id: str | None = None,
                   files: dict[str, Any] | None = None, **extra: Any) -> Artifact:
    out.mkdir(parents=True, exist_ok=True)
    data = zstandard.ZstdCompressor(level=3).compress(tar_bytes)
    parts = []
    for i, start in enumerate(range(0, len(data), part_size)):
        chunk = data[start:start + part_size]
        name = f"env.tar.zst.{i:03d}"
        (out / name).write_bytes(chunk)
        parts.append(Part(name, len(chunk), hashlib.sha256(chunk).hexdigest()))
    env_id = env_id or hashlib.sha256(tar_bytes).hexdigest()[:32]
    extra.setdefault("unpacked_size", len(tar_bytes))
    manifest = make_manifest(env_id, Archive("zstd", len(data), hashlib.sha256(data).hexdigest()), parts,
                             name="test-env", **extra)
    path = out / MANIFEST_NAME
    path.write_text(manifest.to_json())
    return Artifact(out, path, manifest, tar_bytes, data, files or {})


def make_env_artifact(out: Path, **kw: Any) -> Artifact:
    part_size = kw.pop("part_size", 20_000)
    extra = kw.pop("extra", {})
    files = tiny_env_files(**kw)
    return write_artifact(out, build_tar(files), part_size=part_size, files=files, **extra)


# -- the HTTP server --------------------------------------------------------------------------------
@dataclass
class Faults:
    drop_after: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (bytes, times)
    status: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (code, times)
    corrupt_once: set[str] = field(default_factory=set)
    missing: set[str] = field(default_factory=set)
    delay_per_chunk: float = 0.0  # seconds before each chunk: a slow server
    chunk: int = 16384
    redirect_to: str | None = None  # parts answered with 302 to this base URL
    require_token: str | None = None
    ignore_range: bool = False


class Server:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.faults = Faults()
        self.lock = threading.Lock()
        self.bytes_served = 0
        self.requests: list[dict[str, Any]] = []
        self._counts: dict[tuple[str, str], int] = {}
        handler = type("H", (_Handler,), {"server_state": self})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def manifest_url(self, sub: str = "") -> str:
        return f"{self.url}/{sub}{MANIFEST_NAME}" if sub else f"{self.url}/{MANIFEST_NAME}"

    def count(self, name: str, what: str) -> int:
        with self.lock:
            key = (name, what)
            self._counts[key] = self._counts.get(key, 0) + 1
            return self._counts[key]

    def part_requests(self) -> list[dict[str, Any]]:
        return [r for r in self.requests if not r["path"].endswith(MANIFEST_NAME)]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class _Handler(BaseHTTPRequestHandler):
    server_state: Server
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        st = self.server_state
        f = st.faults
        rel = self.path.lstrip("/").split("?")[0]
        name = rel.rsplit("/", 1)[-1]
        with st.lock:
            st.requests.append({"path": rel, "headers": dict(self.headers)})
        if f.require_token and self.headers.get("Authorization") != f"Bearer {f.require_token}":
            return self._plain(401)
        if f.redirect_to and name != MANIFEST_NAME:
            self.send_response(302)
            self.send_header("Location", f"{f.redirect_to}/{rel}?signature=secret")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        path = st.root / rel
        if name in f.missing or not path.is_file():
            return self._plain(404)
        if name in f.status:
            code, times = f.status[name]
            if st.count(name, "status") <= times:
                return self._plain(code)
        data = path.read_bytes()
        start, status = 0, 200
        rng = self.headers.get("Range")
        if rng and not f.ignore_range:
            start = int(rng.split("=")[1].split("-")[0])
            if start >= len(data):
                return self._plain(416)
            status = 206
        body = data[start:]
        if name in f.corrupt_once and st.count(name, "corrupt") == 1 and body:
            body = bytearray(body)
            body[len(body) // 2] ^= 0xFF
            body = bytes(body)
        limit = len(body)
        if name in f.drop_after:
            after, times = f.drop_after[name]
            if st.count(name, "drop") <= times:
                limit = min(limit, after)
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        view = memoryview(body)[:limit]
        try:
            for i in range(0, len(view), f.chunk):
                chunk = view[i:i + f.chunk]
                if f.delay_per_chunk:
                    time.sleep(f.delay_per_chunk)
                self.wfile.write(chunk)
                self.wfile.flush()
                with st.lock:
                    st.bytes_served += len(chunk)
            if limit < len(body):
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(2)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _plain(self, code: int) -> None:
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    root = tmp_path / "srv"
    root.mkdir()
    srv = Server(root)
    yield srv
    srv.close()


@pytest.fixture
def artifact(server: Server) -> Artifact:
    return make_env_artifact(server.root, part_size=16_000, big=60_000)


# -- running the installer ---------------------------------------------------------------------------
def bootstrap_env(**over: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("RUNPOD_", "BOOTSTRAP_", "MANIFEST_")) and k != "GITHUB_TOKEN"}
    # The placement is pinned (auto would measure this machine's disk and could pick either); the
    # `placement` fixture runs a test in each one.
    env.update(PYTHONPATH=str(ROOT), BOOTSTRAP_LEASE_TTL="3", BOOTSTRAP_PROGRESS_INTERVAL="0.3",
               BOOTSTRAP_BACKOFF_MAX="0.2", BOOTSTRAP_VOLUME_FALLBACK="fail", BOOTSTRAP_PLACEMENT="volume")
    env.update(over)
    return env


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str

    @property
    def result(self) -> dict[str, Any]:
        return json.loads(self.stdout.strip().splitlines()[-1])


def run_bootstrap(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> Run:
    proc = subprocess.run([sys.executable, "-m", "worker.bootstrap", *args], capture_output=True, text=True,
                          env=env or bootstrap_env(), timeout=timeout, cwd=ROOT)
    return Run(proc.returncode, proc.stdout, proc.stderr)


def spawn_bootstrap(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "worker.bootstrap", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env or bootstrap_env(), cwd=ROOT)


def assert_tree_matches(env_dir: Path, files: dict[str, Any], relocated: bool = True) -> None:
    """The installed tree holds exactly what the archive held (placeholders relocated)."""
    for name, spec in files.items():
        path = env_dir / name
        if isinstance(spec, bytes) or spec[0] == "exec":
            data = spec if isinstance(spec, bytes) else spec[1]
            want = data
            if relocated and name in ("etc/config.txt", "bin/tool"):
                want = data.replace(PLACEHOLDER.encode(), str(env_dir).encode())
            assert path.read_bytes() == want, name
        elif spec[0] == "link":
            assert os.readlink(path) == spec[1], name
        elif spec[0] == "dir":
            assert path.is_dir(), name


# -- placements -------------------------------------------------------------------------------------
@dataclass
class Placement:
    """One placement mode for a test: the environment of an installer in a given container (each
    container has its own disk), and what "ready" means there."""

    mode: str
    root: Path

    def container(self, name: str = "c0") -> Path:
        return self.root / "containers" / name

    def env(self, container: str = "c0", **over: str) -> dict[str, str]:
        return bootstrap_env(BOOTSTRAP_PLACEMENT=self.mode,
                             BOOTSTRAP_CONTAINER_DIR=str(self.container(container)), **over)

    def ready_path(self, vol: Path, artifact: Artifact, container: str = "c0") -> Path | None:
        """Where a start in ``container`` would run the env from, if it is ready there without work."""
        from worker.bootstrap.commit import ready_path
        from worker.bootstrap.layout import Layout

        if self.mode == "parts":
            return ready_path(Layout(self.container(container)), artifact.manifest)
        return ready_path(Layout(vol), artifact.manifest)

    def check_never_broken(self, vol: Path, artifact: Artifact, container: str = "c0") -> bool:
        """Whatever the volume and the container say is ready is complete and right. Returns whether the
        env is ready for ``container``."""
        from artifact.files import sha256_file
        from worker.bootstrap.layout import Layout
        from worker.bootstrap.parts import parts_ready

        layout = Layout(vol)
        if parts_ready(layout, artifact.manifest):  # committed parts: every one verified
            for part in artifact.manifest.parts:
                assert sha256_file(layout.parts_dir(artifact.env_id) / part.name) == part.sha256, part.name
        path = self.ready_path(vol, artifact, container)
        if path is not None:
            assert_tree_matches(path, artifact.files)
        return path is not None


@pytest.fixture(params=["volume", "parts"])
def placement(request: pytest.FixtureRequest, tmp_path: Path) -> Placement:
    return Placement(request.param, tmp_path)
