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

from worker.engine import models
from worker.engine.models import MARKER, HubSpec, ModelError, parse_spec, resolve

SHA = "0123456789abcdef0123456789abcdef01234567"
FILES = {"config.json": b'{"dim": 4}\n', "weights/model.bin": b"\x00\x01" * 5000}
# A wav2vec2 CTC repo laid out like facebook/wav2vec2-base-960h: the same weights in four formats.
W2V_WEIGHTS = b"\x07" * 40_000
W2V_FILES = {"config.json": b'{"model_type": "wav2vec2"}', "preprocessor_config.json": b"{}",
             "vocab.json": b'{"a": 1}', "tokenizer_config.json": b"{}", "special_tokens_map.json": b"{}",
             "README.md": b"# model card\n" * 100, ".gitattributes": b"*.bin lfs\n",
             "pytorch_model.bin": W2V_WEIGHTS, "model.safetensors": W2V_WEIGHTS,
             "tf_model.h5": W2V_WEIGHTS, "flax_model.msgpack": W2V_WEIGHTS}
REPOS = {"owner/repo": FILES, "owner/w2v": W2V_FILES,
         "owner/w2v-bin": {k: v for k, v in W2V_FILES.items() if k not in ("model.safetensors",)},
         "owner/no-weights": {"config.json": b"{}", "README.md": b"none"}}


class Hub:
    def __init__(self) -> None:
        self.gets: list[str] = []
        self.served: dict[str, int] = {}  # file path -> bytes sent
        self.fail = False
        self.lock = threading.Lock()

    def handler(self):
        hub = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _file(self) -> tuple[str, bytes] | None:
                for repo, files in REPOS.items():
                    prefix = f"/{repo}/resolve/{SHA}/"
                    if self.path.startswith(prefix) and self.path[len(prefix):] in files:
                        name = self.path[len(prefix):]
                        return f"{repo}/{name}", files[name]
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
                repo = next((r for r in REPOS if self.path.split("?")[0] in (
                    f"/api/models/{r}/revision/v1", f"/api/models/{r}/revision/{SHA}")), None)
                if repo is not None:
                    body = json.dumps({"id": repo, "sha": SHA, "siblings": [
                        {"rfilename": n, "size": len(b)} for n, b in REPOS[repo].items()]}).encode()
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
                with hub.lock:
                    hub.served[found[0]] = hub.served.get(found[0], 0) + len(found[1])

        return H


@pytest.fixture
def hub(monkeypatch):
    # An Engine loaded earlier in this process took it offline (worker.engine.core.go_offline); a fresh worker
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

    from worker.engine.core import go_offline

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "0")
    go_offline()
    assert huggingface_hub.constants.HF_HUB_OFFLINE is True
    with pytest.raises(ModelError, match="WHISPER_MODEL"):
        resolve("hf:owner/repo@v1", tmp_path, "WHISPER_MODEL", endpoint=hub.endpoint)
    assert not _file_gets(hub) and not any("/api/" in p for p in hub.gets)


# -- only what each model needs -----------------------------------------------------------------------
def test_each_model_takes_only_what_its_loader_reads():
    from worker.engine import model_files as mf

    whisper_repo = ["README.md", ".gitattributes", "config.json", "model.bin", "preprocessor_config.json",
                    "tokenizer.json", "vocabulary.json"]
    assert mf.WHISPER.select(whisper_repo) == ["config.json", "model.bin", "preprocessor_config.json",
                                               "tokenizer.json", "vocabulary.json"]
    assert mf.VOCOS.select(["README.md", "config.yaml", "pytorch_model.bin"]) == ["config.yaml",
                                                                                 "pytorch_model.bin"]
    w2v = mf.WAV2VEC2.select(sorted(W2V_FILES))
    assert w2v == ["config.json", "model.safetensors", "preprocessor_config.json", "special_tokens_map.json",
                   "tokenizer_config.json", "vocab.json"]
    sharded = ["config.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
               "model.safetensors.index.json", "pytorch_model.bin"]
    assert mf.WAV2VEC2.select(sharded) == ["config.json", *sharded[1:4]]
    assert "pytorch_model.bin" in mf.WAV2VEC2.select(["config.json", "pytorch_model.bin", "tf_model.h5"])
    with pytest.raises(LookupError, match="no wav2vec2 weights"):
        mf.WAV2VEC2.select(["config.json", "tf_model.h5"])


def test_only_the_needed_files_are_downloaded_against_the_whole_repo(hub, tmp_path):
    from worker.engine import model_files as mf

    resolve("hf:owner/w2v@v1", tmp_path / "whole", "ALIGN_MODELS[en]", endpoint=hub.endpoint)
    whole_bytes = sum(hub.served.values())
    assert whole_bytes == sum(len(b) for b in W2V_FILES.values())
    hub.served.clear()
    path = resolve("hf:owner/w2v@v1", tmp_path / "needed", "ALIGN_MODELS[en]", endpoint=hub.endpoint,
                   needs=mf.WAV2VEC2)
    needed = mf.WAV2VEC2.select(sorted(W2V_FILES))
    assert sorted(hub.served) == sorted(f"owner/w2v/{n}" for n in needed)
    assert sum(hub.served.values()) == sum(len(W2V_FILES[n]) for n in needed)
    assert sum(hub.served.values()) < 0.3 * whole_bytes  # one weights format of four, no README
    assert sorted(json.loads((path / MARKER).read_text())["files"]) == needed
    assert (path / "model.safetensors").read_bytes() == W2V_WEIGHTS
    hub.served.clear()
    bin_only = resolve("hf:owner/w2v-bin@v1", tmp_path / "bin", "ALIGN_MODELS[en]", endpoint=hub.endpoint,
                       needs=mf.WAV2VEC2)
    assert (bin_only / "pytorch_model.bin").is_file() and not (bin_only / "tf_model.h5").exists()


def test_a_repo_without_the_models_weights_is_named(hub, tmp_path):
    from worker.engine import model_files as mf

    with pytest.raises(ModelError, match=r"ALIGN_MODELS\[en\].*no wav2vec2 weights"):
        resolve("hf:owner/no-weights@v1", tmp_path, "ALIGN_MODELS[en]", endpoint=hub.endpoint,
                needs=mf.WAV2VEC2)
    assert not hub.served


# -- WhisperX's alignment defaults, torchaudio bundles included -----------------------------------------
def test_alignment_defaults_are_whisperx_own():
    from whisperx.alignment import DEFAULT_ALIGN_MODELS_HF, DEFAULT_ALIGN_MODELS_TORCH

    from worker.engine.models import whisperx_align_default

    assert set(DEFAULT_ALIGN_MODELS_TORCH) == {"en", "fr", "de", "es", "it"}
    for lang, bundle in DEFAULT_ALIGN_MODELS_TORCH.items():
        assert whisperx_align_default(lang, "X") == f"torchaudio:{bundle}"
        assert isinstance(parse_spec(whisperx_align_default(lang, "X"), "X"), models.TorchaudioSpec)
    for lang, repo in DEFAULT_ALIGN_MODELS_HF.items():
        assert parse_spec(whisperx_align_default(lang, "X"), "X") == HubSpec(repo, "main")
    with pytest.raises(ModelError, match=r"ALIGN_MODELS\[xx\]: WhisperX has no default"):
        whisperx_align_default("xx", "ALIGN_MODELS[xx]")
    with pytest.raises(ModelError, match="not a torchaudio pipeline bundle"):
        models.bundle_weights("NOT_A_BUNDLE", "X")
    with pytest.raises(ModelError, match="torchaudio:<BUNDLE>"):
        parse_spec("torchaudio:lower-case", "X")


class _Files(BaseHTTPRequestHandler):
    """Serves a directory (torchaudio's model URL stand-in), counting requests per path."""

    root: Path
    hits: dict[str, int]

    def do_GET(self) -> None:
        self.hits[self.path] = self.hits.get(self.path, 0) + 1
        path = self.root / self.path.lstrip("/")
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def bundle_file(tmp_path_factory) -> Path:
    """WAV2VEC2_ASR_BASE_960H's weight file in torchaudio's own format, random weights: the real
    architecture built by torchaudio's own builder (with the three fairseq label rows the bundle drops at
    load), saved as fp16 (~190 MB) to keep it small."""
    import torch
    import torchaudio
    from torchaudio.pipelines._wav2vec2 import utils as w2v_utils

    bundle = torchaudio.pipelines.WAV2VEC2_ASR_BASE_960H
    params = {**bundle._params, "aux_num_out": bundle._params["aux_num_out"] + len(bundle._remove_aux_axis)}
    torch.manual_seed(0)
    model = w2v_utils._get_model(bundle._model_type, params)
    state = {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    out = tmp_path_factory.mktemp("torchaudio-models") / "models" / bundle._path
    out.parent.mkdir(parents=True)
    torch.save(state, out)
    return out


@pytest.mark.slow
def test_torchaudio_bundle_is_fetched_once_onto_the_volume_then_loads_offline(bundle_file, tmp_path):
    import numpy as np
    from jobkit import TINY_CACHE

    from devtools.tiny import ensure_tiny_models
    from worker.engine.asr import WhisperX

    handler = type("H", (_Files,), {"root": bundle_file.parent.parent, "hits": {}})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_port}/models"
    try:
        got = resolve("torchaudio:WAV2VEC2_ASR_BASE_960H", tmp_path / "models", "ALIGN_MODELS[en]",
                      torchaudio_url=base)
        assert got == models.TorchaudioModel("WAV2VEC2_ASR_BASE_960H", tmp_path / "models" / "torchaudio")
        assert (got.model_dir / bundle_file.name).read_bytes() == bundle_file.read_bytes()
        assert resolve("torchaudio:WAV2VEC2_ASR_BASE_960H", tmp_path / "models", "ALIGN_MODELS[en]",
                       torchaudio_url=base) == got
        assert handler.hits == {f"/models/{bundle_file.name}": 1}  # once, for every later start too
        assert not [p for p in got.model_dir.iterdir() if p.name.startswith(".")]  # no partial left
    finally:
        server.shutdown()
        server.server_close()
    # Nothing listens now, and this machine has no route to download.pytorch.org: WhisperX's own loader
    # (torchaudio's bundle, torch.hub's cache lookup) must find the weights on the volume.
    root = ensure_tiny_models(TINY_CACHE)
    asr = WhisperX(root / "whisper", {"en": got}, "en", "cpu", "float32", 1, "none")
    assert asr.align_model("en").metadata["type"] == "torchaudio"
    t = np.arange(16000, dtype=np.float32) / 16000
    audio = (0.1 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    import nltk

    models.write_punkt_tab(tmp_path / "nltk", ("english",))  # as the engine does at load
    nltk.data.path.insert(0, str(tmp_path / "nltk"))
    try:
        result = asr.align([{"text": "hello world", "start": 0.0, "end": 1.0}], audio, "en")
    finally:
        nltk.data.path.remove(str(tmp_path / "nltk"))
    assert [s["text"] for s in result["segments"]] == ["hello world"]


@pytest.mark.slow
def test_a_failed_bundle_download_leaves_nothing_and_names_the_variable(tmp_path):
    handler = type("H", (_Files,), {"root": tmp_path / "empty", "hits": {}})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with pytest.raises(ModelError, match=r"ALIGN_MODELS\[fr\]: downloading torchaudio bundle "
                                             r"VOXPOPULI_ASR_BASE_10K_FR .* 404"):
            resolve("torchaudio:VOXPOPULI_ASR_BASE_10K_FR", tmp_path / "models", "ALIGN_MODELS[fr]",
                    torchaudio_url=f"http://127.0.0.1:{server.server_port}/models")
    finally:
        server.shutdown()
        server.server_close()
    assert [p.name for p in (tmp_path / "models" / "torchaudio").iterdir()] == []
