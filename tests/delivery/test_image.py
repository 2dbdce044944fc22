"""The Dockerfile and .dockerignore: what the image holds, and that it is enough.

No Docker engine runs here, so the image is checked from both ends: its build args and ENV are the
variables the installer really reads (checked on worker.bootstrap.config, not on a list); and the build
context .dockerignore lets through, plus the image's one wheel, is enough for a real install: the test
copies exactly that context, runs `python -S -m worker.bootstrap` from it (stdlib + zstandard, as in the
image, without the cffi backend the Dockerfile drops) and installs a real artifact.
"""

from __future__ import annotations

import fnmatch
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import ClassVar

import pytest

from worker.bootstrap.config import from_environ

from .conftest import REPO, serve

DOCKERFILE = (REPO / "Dockerfile").read_text()
# Variables for the Python runtime itself rather than for the installer.
RUNTIME_ENV = {"PYTHONPATH", "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE"}
# The code the image copies: the artifact contract and the worker (bootstrap included).
CODE_TREES = ("artifact/", "worker/")


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    kept = "\n".join(ln for ln in text.splitlines() if not ln.lstrip().startswith("#"))
    joined = re.sub(r"\\\n", " ", kept)
    out = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def env_pairs() -> dict[str, str]:
    pairs: dict[str, str] = {}
    for word, rest in instructions(DOCKERFILE):
        if word == "ENV":
            for key, value in re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=(\S+)", rest):
                pairs[key] = value
    return pairs


def test_build_args_become_the_installers_variables() -> None:
    args = {rest.split("=")[0] for word, rest in instructions(DOCKERFILE) if word == "ARG"}
    assert {"MANIFEST_URL", "MANIFEST_SHA256"} <= args
    env = env_pairs()
    assert env["MANIFEST_URL"] == "${MANIFEST_URL}"
    assert env["MANIFEST_SHA256"] == "${MANIFEST_SHA256}"
    # ...and those names are what the installer reads: the baked-in values reach its config.
    url, sha = "https://example.invalid/releases/download/v1.0.0/manifest.json", "ab" * 32
    config = from_environ({"MANIFEST_URL": url, "MANIFEST_SHA256": sha})
    assert (config.manifest_url, config.manifest_sha256) == (url, sha)


def test_every_env_the_image_sets_is_read_by_someone() -> None:
    for key in env_pairs():
        if key in RUNTIME_ENV:
            continue
        assert from_environ({key: "x" * 64 if "SHA" in key else "file:///x"}) != from_environ({}), (
            f"the Dockerfile sets {key}, which the installer does not read")


def test_entrypoint_workdir_and_pythonpath_fit_together() -> None:
    ins = instructions(DOCKERFILE)
    entry = [json.loads(rest) for word, rest in ins if word == "ENTRYPOINT"]
    assert entry == [["python", "-m", "worker.bootstrap"]]
    workdir = [rest for word, rest in ins if word == "WORKDIR"][-1]
    assert env_pairs()["PYTHONPATH"] == workdir
    copies = [rest.split() for word, rest in ins if word == "COPY"]
    assert ["worker/", f"{workdir}/worker/"] in copies
    assert ["artifact/", f"{workdir}/artifact/"] in copies
    assert not [word for word, _ in ins if word == "HEALTHCHECK"]  # serverless ignores it (docs/image.md)


def test_base_image_is_pinned_by_tag_and_digest() -> None:
    froms = [rest for word, rest in instructions(DOCKERFILE) if word == "FROM"]
    assert len(froms) == 1, "one stage; a literal FROM so Dependabot can bump tag and digest together"
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm@sha256:[0-9a-f]{64}", froms[0])


def dockerignore_includes(path: str, rules: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; a pattern matching a parent directory counts."""
    parts = path.split("/")
    included = True
    for rule in rules:
        negate = rule.startswith("!")
        pattern = rule[1:] if negate else rule
        pattern = pattern.rstrip("/")
        candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatchcase(c, pattern) or
               (pattern.startswith("**/") and fnmatch.fnmatchcase(c.rsplit("/", 1)[-1], pattern[3:]))
               for c in candidates):
            included = negate
    return included


def image_context(root: Path) -> list[str]:
    rules = [ln.strip() for ln in (root / ".dockerignore").read_text().splitlines()
             if ln.strip() and not ln.lstrip().startswith("#")]
    files = subprocess.run(["git", "-C", str(root), "ls-files", "--cached", "--others", "--exclude-standard"],
                           capture_output=True, text=True, check=True).stdout.split()
    return sorted(f for f in files if (root / f).is_file() and dockerignore_includes(f, rules))


def test_dockerignore_lets_through_only_what_the_image_needs() -> None:
    context = image_context(REPO)
    assert "requirements/image.txt" in context
    assert "worker/bootstrap/__main__.py" in context and "artifact/manifest.py" in context
    outside = [f for f in context if not (f.startswith(CODE_TREES) or f == "requirements/image.txt")]
    assert not outside, f"the build context carries files the image does not use: {outside}"
    assert not [f for f in context if "__pycache__" in f or f.endswith(".pyc")]


def image_like(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """/opt/app as the image has it (only what .dockerignore lets through) and the environment to run
    `python -S -m worker.bootstrap` there: no site-packages, so only the stdlib, the copied context and
    zstandard as the Dockerfile leaves it (C backend only) are importable. No runpod SDK."""
    app = tmp_path / "opt" / "app"
    for rel in image_context(REPO):
        if rel.startswith(CODE_TREES):
            (app / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, app / rel)
    import zstandard

    site = tmp_path / "site"
    shutil.copytree(Path(zstandard.__file__).parent, site / "zstandard",
                    ignore=shutil.ignore_patterns("_cffi.*", "backend_cffi.py", "__pycache__"))
    volume = tmp_path / "runpod-volume"
    volume.mkdir()
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(site), "RUNPOD_VOLUME": str(volume),
           "BOOTSTRAP_VOLUME_FALLBACK": "fail", "HOME": str(tmp_path)}
    return app, env


@pytest.mark.slow
def test_the_image_context_alone_installs_a_real_artifact(artifact_dir: Path, tmp_path: Path) -> None:
    app, env = image_like(tmp_path)
    volume = Path(env["RUNPOD_VOLUME"])
    with serve(artifact_dir) as base:
        env["MANIFEST_URL"] = f"{base}/manifest.json"
        # -S: no site-packages, so only the stdlib, the copied context and zstandard are importable.
        proc = subprocess.run([sys.executable, "-S", "-m", "worker.bootstrap", "--no-exec"], cwd=app, env=env,
                              capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["status"] == "ready" and Path(result["path"]).parent == volume / "envs"


class _JobQueue(http.server.BaseHTTPRequestHandler):
    """RunPod's job endpoints as the serverless worker loop uses them: take a job, post its result."""

    jobs: ClassVar[list[dict]] = []
    results: ClassVar[list[tuple[str, str, dict]]] = []

    def do_GET(self) -> None:
        if self.path.startswith("/take/pod-1") and self.jobs:
            body = json.dumps(self.jobs.pop(0)).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self.send_response(204 if self.path.startswith("/take/") else 404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_POST(self) -> None:
        data = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.results.append((self.path, self.headers.get("Authorization", ""), json.loads(data)))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_without_the_runpod_sdk_a_failed_install_still_answers_jobs(tmp_path: Path) -> None:
    """Why the image can leave the runpod SDK out (docs/image.md): the bootstrap's stdlib job loop puts
    an install failure into the job's response."""
    app, env = image_like(tmp_path)
    _JobQueue.jobs = [{"id": "job-1", "input": {"text": "hello"}}]
    _JobQueue.results = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _JobQueue)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    env.update(MANIFEST_URL=f"{base}/releases/v9.9.9/manifest.json", RUNPOD_POD_ID="pod-1",
               RUNPOD_AI_API_KEY="test-key", RUNPOD_WEBHOOK_GET_JOB=f"{base}/take/$ID",
               RUNPOD_WEBHOOK_POST_OUTPUT=f"{base}/done/$ID")
    proc = subprocess.Popen([sys.executable, "-S", "-m", "worker.bootstrap"], cwd=app, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not _JobQueue.results and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
        assert _JobQueue.results, f"no job was answered (exit {proc.poll()})"
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=30)
        server.shutdown()
        server.server_close()
    path, auth, result = _JobQueue.results[0]
    assert path.startswith("/done/job-1") and auth == "test-key"
    assert "404" in result["error"] and "manifest" in result["error"]
    failure = json.loads(out.strip().splitlines()[0])
    assert failure["status"] == "failed" and failure["phase"] in ("fetch", "manifest")
    assert "runpod SDK not installed" in err or "built-in job loop" in err
