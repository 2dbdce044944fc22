"""Fixtures of the delivery tests: a real packed artifact (pack's own build of the bundled example env,
once per session) with the SHA256SUMS the pack workflow writes, served by a real HTTP server."""

from __future__ import annotations

import contextlib
import functools
import http.server
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def artifact_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from pack.build import build
    from pack.options import PackOptions

    work = tmp_path_factory.mktemp("delivery-work")
    out = tmp_path_factory.mktemp("delivery-release")
    # Level 3 and small parts: quick, and several parts so their order and concatenation matter.
    build(PackOptions(out=out, work=work, name="example", level=3, part_size=4 << 20))
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "verify_artifact.py"), str(out)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return out


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def serve(directory: Path) -> Iterator[str]:
    """A real HTTP server for `directory` on 127.0.0.1; yields its base URL."""
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def release_copy(artifact_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the release assets that a test may damage."""
    copy = tmp_path / "release"
    shutil.copytree(artifact_dir, copy)
    return copy
