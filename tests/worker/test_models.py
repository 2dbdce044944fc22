"""Model resolution: local paths; pinned hub revisions downloaded once, under the lease, committed
atomically. Downloads run the real huggingface_hub client against a local HTTP server that speaks the
two hub endpoints snapshot_download uses (repo info + file resolve). What only production exercises:
the real hub (redirects to its CDN, xet storage, auth) and a real network volume."""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from worker import models
from worker.models import MARKER, HubSpec, ModelError, parse_spec, resolve

SHA = "0123456789abcdef0123456789abcdef01234567"
FILES = {"config.json": b'{"dim": 4}\n', "weights/model.bin": b"\x00\x01" * 5000}


class Hub:
    def __init__(self) -> None:
        self.gets: list[str] = []
        self.fail = False
        self.lock = threading.Lock()

    def handler(self):
        hub = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _file(self) -> tuple[str, bytes] | None:
                prefix = f"/owner/repo/resolve/{SHA}/"
                if self.path.startswith(prefix) and self.path[len(prefix):] in FILES:
                    name = self.path[len(prefix):]
                    return name, FILES[name]
                return None

            def _send_file_headers(self, body: bytes) -> None:
                self.send_response(200)
                self.send_header("X-Repo-Commit", SHA)
                self.send_header("ETag", '"' + hashlib.sha256(body).hexdigest() + '"')
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()

            def do_HEAD(self) -> None:
                found = self._file()
                if found is None or hub.fail:
                    self.send_error(404 if found is None else 500)
                    return
                self._send_file_headers(found[1])

            def do_GET(self) -> None:
                with hub.lock:
                    hub.gets.append(self.path)
                if hub.fail:
                    self.send_error(500)
                    return
                if self.path.split("?")[0] in ("/api/models/owner/repo/revision/v1",
                                               f"/api/models/owner/repo/revision/{SHA}"):
                    body = json.dumps({"id": "owner/repo", "sha": SHA,
                                       "siblings": [{"rfilename": n} for n in FILES]}).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                found = self._file()
                if found is None:
                    self.send_error(404)
                    return
                self._send_file_headers(found[1])
                self.wfile.write(found[1])

        return H


@pytest.fixture
def hub(monkeypatch):
    # An Engine loaded earlier in this process took it offline (worker.engine.go_offline); a fresh worker
    # resolves its models before that, so these tests start online too.
    import huggingface_hub.constants
    from huggingface_hub.utils import reset_sessions

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    reset_sessions()
    state = Hub()
    server = ThreadingHTTPServer(("127.0.0.1", 0), state.handler())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    yield state
    server.shutdown()
    server.server_close()


def _file_gets(hub: Hub) -> list[str]:
    return [p for p in hub.gets if "/resolve/" in p]


def test_parse_spec():
    assert parse_spec("hf:owner/repo@v1", "X") == HubSpec("owner/repo", "v1", None)
    want = HubSpec("owner/repo", "abc123", "sub/file.bin")
    assert parse_spec("hf:owner/repo@abc123:sub/file.bin", "X") == want
    assert parse_spec("/models/f5", "X") == Path("/models/f5")
    for bad in ("hf:owner/repo", "hf:repo@v1", "hf:owner/repo@"):
        with pytest.raises(ModelError, match="X="):
            parse_spec(bad, "X")


def test_local_paths_are_used_in_place(tmp_path):
    d = tmp_path / "model"
    d.mkdir()
    assert resolve(str(d), tmp_path / "models", "F5_VOCODER") == d
    with pytest.raises(ModelError, match=r"F5_VOCODER=.*no such file"):
        resolve(str(tmp_path / "missing"), tmp_path / "models", "F5_VOCODER")


def test_hub_revision_is_downloaded_once_with_a_marker(hub, tmp_path):
    path = resolve("hf:owner/repo@v1", tmp_path, "WHISPER_MODEL", endpoint=hub.endpoint)
    assert path == tmp_path / "hf" / "owner--repo" / "v1"
    assert (path / "weights" / "model.bin").read_bytes() == FILES["weights/model.bin"]
    marker = json.loads((path / MARKER).read_text())
    assert marker["repo"] == "owner/repo" and marker["revision"] == "v1"
    assert sorted(marker["files"]) == sorted(FILES)
    assert not (path / ".cache").exists()
    assert not [p for p in path.parent.iterdir() if ".tmp-" in p.name]
    fetched = len(_file_gets(hub))
    assert fetched == len(FILES)
    # Second resolution (another worker, a restart): nothing is fetched.
    assert resolve("hf:owner/repo@v1", tmp_path, "WHISPER_MODEL", endpoint=hub.endpoint) == path
    assert len(_file_gets(hub)) == fetched


def test_single_file_spec_returns_the_file(hub, tmp_path):
    path = resolve("hf:owner/repo@v1:config.json", tmp_path, "F5_CKPT", endpoint=hub.endpoint)
    assert path.read_bytes() == FILES["config.json"]
    assert not (path.parent / "weights").exists()


def test_concurrent_workers_download_once(hub, tmp_path):
    results: list[Path] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            results.append(resolve("hf:owner/repo@v1", tmp_path, "WHISPER_MODEL", endpoint=hub.endpoint))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and len(set(results)) == 1 and len(results) == 4
    assert len(_file_gets(hub)) == len(FILES)


def test_interrupted_commit_is_redone(hub, tmp_path):
    path = resolve("hf:owner/repo@v1", tmp_path, "WHISPER_MODEL", endpoint=hub.endpoint)
    (path / MARKER).unlink()  # renamed into place, marker never written: not proof of completion
    (path / "config.json").write_bytes(b"truncated")
    again = resolve("hf:owner/repo@v1", tmp_path, "WHISPER_MODEL", endpoint=hub.endpoint)
    assert (again / "config.json").read_bytes() == FILES["config.json"]
    assert (again / MARKER).is_file()


def test_failed_download_leaves_nothing_and_names_the_variable(hub, tmp_path):
    hub.fail = True
    with pytest.raises(ModelError, match="WHISPER_MODEL: downloading owner/repo@v1 failed"):
        resolve("hf:owner/repo@v1", tmp_path, "WHISPER_MODEL", endpoint=hub.endpoint)
    parent = tmp_path / "hf" / "owner--repo"
    assert not (parent / "v1").exists()
    assert not [p for p in parent.iterdir() if ".tmp-" in p.name]


def test_missing_file_in_repo_is_named(hub, tmp_path):
    with pytest.raises(ModelError, match="F5_CKPT"):
        resolve("hf:owner/repo@v1:nope.safetensors", tmp_path, "F5_CKPT", endpoint=hub.endpoint)


def test_punkt_tab_written_offline_and_usable(tmp_path):
    import nltk
    from nltk.tokenize.punkt import PunktTokenizer

    models.write_punkt_tab(tmp_path, ("english",))
    nltk.data.path.insert(0, str(tmp_path))
    try:
        spans = list(PunktTokenizer("english").span_tokenize("First one here. Second one there."))
    finally:
        nltk.data.path.remove(str(tmp_path))
    assert len(spans) == 2


def test_go_offline_blocks_hub_downloads_afterwards(hub, tmp_path, monkeypatch):
    import huggingface_hub.constants

    from worker.engine import go_offline

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "0")
    go_offline()
    assert huggingface_hub.constants.HF_HUB_OFFLINE is True
    with pytest.raises(ModelError, match="WHISPER_MODEL"):
        resolve("hf:owner/repo@v1", tmp_path, "WHISPER_MODEL", endpoint=hub.endpoint)
    assert not _file_gets(hub) and not any("/api/" in p for p in hub.gets)
