"""docs/artifact.md's two ways to use a release outside RunPod, run for real.

The shell block marked `<!-- tested: manual-install -->` is taken verbatim from the doc (only BASE and
DEST are pointed at this test's server and directory) and run with bash against a real artifact (pack's
own build of the example env) served over HTTP on 127.0.0.1: curl, sha256sum -c, zstd -d | tar -x,
conda-unpack. Then the installer path: `python -m worker.bootstrap --volume DIR --no-exec`.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO, serve

pytestmark = pytest.mark.slow  # the session's artifact is a real pack build (about a minute)

DOC = REPO / "docs" / "artifact.md"


def doc_block(marker: str) -> str:
    text = DOC.read_text()
    match = re.search(rf"<!-- tested: {re.escape(marker)} -->\s*```sh\n(.*?)```", text, re.S)
    assert match, f"docs/artifact.md has no ```sh block after <!-- tested: {marker} -->"
    return match.group(1)


def run_block(block: str, base: str, dest: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    script, n_base = re.subn(r"^BASE=.*$", f"BASE={shlex.quote(base)}", block, flags=re.M)
    script, n_dest = re.subn(r"^DEST=.*$", f"DEST={shlex.quote(str(dest))}", script, flags=re.M)
    assert (n_base, n_dest) == (1, 1), "the documented block must set BASE and DEST once each"
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=cwd, capture_output=True,
                          text=True, timeout=600)


def test_documented_manual_install_works(artifact_dir: Path, tmp_path: Path) -> None:
    manifest = json.loads((artifact_dir / "manifest.json").read_text())
    assert len(manifest["parts"]) > 1, "the test needs several parts: order and concatenation matter"
    dest = tmp_path / "opt" / "f5-tts-env"
    with serve(artifact_dir) as base:
        proc = run_block(doc_block("manual-install"), base, dest, tmp_path / "work")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    # sha256sum -c checked the manifest and every part
    for name in ["manifest.json", *(p["name"] for p in manifest["parts"])]:
        assert f"{name}: OK" in out
    assert f"env ready at {dest}" in out
    # Relocated for real: the compiled binary and the text file name the new prefix, not the build's.
    hello = subprocess.run([str(dest / "bin" / "hello-prefix")], capture_output=True, text=True, check=True)
    assert f"prefix={dest}" in hello.stdout and "hello from the example env" in hello.stdout
    assert (dest / "share" / "hello-prefix" / "prefix.txt").read_text() == f"prefix={dest}\n"
    # The env's interpreter and an entry point work from the new place once it is on PATH.
    env = {**os.environ, "PATH": f"{dest / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("PYTHONPATH", None)
    noarch = subprocess.run(["hello-noarch"], capture_output=True, text=True, env=env)
    assert noarch.returncode == 0, noarch.stderr
    prefix = subprocess.run(["python", "-c", "import sys; print(sys.prefix)"], capture_output=True,
                            text=True, env=env, check=True)
    assert prefix.stdout.strip() == str(dest)


def test_manual_install_stops_at_a_corrupted_part(release_copy: Path, tmp_path: Path) -> None:
    manifest = json.loads((release_copy / "manifest.json").read_text())
    victim = release_copy / manifest["parts"][1]["name"]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    dest = tmp_path / "env"
    with serve(release_copy) as base:
        proc = run_block(doc_block("manual-install"), base, dest, tmp_path / "work")
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert f"{victim.name}: FAILED" in out
    assert not dest.exists(), "nothing may be extracted once verification failed"


def test_manual_install_stops_at_a_missing_part(release_copy: Path, tmp_path: Path) -> None:
    manifest = json.loads((release_copy / "manifest.json").read_text())
    (release_copy / manifest["parts"][-1]["name"]).unlink()
    dest = tmp_path / "env"
    with serve(release_copy) as base:
        proc = run_block(doc_block("manual-install"), base, dest, tmp_path / "work")
    assert proc.returncode != 0
    assert not dest.exists()


def low_disk_script() -> str:
    """Step 1 of the manual block up to parts.txt, then the low-disk block, as the doc says."""
    head = doc_block("manual-install").split("parts.txt\n", 1)[0] + "parts.txt\n"
    return head + doc_block("low-disk-install")


def test_documented_low_disk_install_works(artifact_dir: Path, tmp_path: Path) -> None:
    dest = tmp_path / "env"
    work = tmp_path / "work"
    with serve(artifact_dir) as base:
        proc = run_block(low_disk_script(), base, dest, work)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    hello = subprocess.run([str(dest / "bin" / "hello-prefix")], capture_output=True, text=True, check=True)
    assert f"prefix={dest}" in hello.stdout
    assert not list((work / "artifact").glob("*.tar.zst.*")), "each part is deleted once extracted"


def test_low_disk_install_stops_at_a_corrupted_part(release_copy: Path, tmp_path: Path) -> None:
    manifest = json.loads((release_copy / "manifest.json").read_text())
    victim = release_copy / manifest["parts"][-1]["name"]
    victim.write_bytes(victim.read_bytes()[:-1] + b"\0")
    dest = tmp_path / "env"
    with serve(release_copy) as base:
        proc = run_block(low_disk_script(), base, dest, tmp_path / "work")
    assert proc.returncode != 0
    assert f"{victim.name}: FAILED" in proc.stdout + proc.stderr  # caught before its bytes reached tar


def _bootstrap(args: list[str]) -> tuple[subprocess.CompletedProcess[str], dict]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "BOOTSTRAP_VOLUME_FALLBACK": "fail"}
    for name in ("MANIFEST_URL", "MANIFEST_SHA256", "RUNPOD_POD_ID", "RUNPOD_WEBHOOK_GET_JOB"):
        env.pop(name, None)
    proc = subprocess.run([sys.executable, "-m", "worker.bootstrap", *args], capture_output=True, text=True,
                          env=env, timeout=600)
    lines = proc.stdout.strip().splitlines()
    assert lines, proc.stderr
    return proc, json.loads(lines[-1])


def test_documented_installer_on_any_directory(artifact_dir: Path, tmp_path: Path) -> None:
    sha = next(line.split()[0] for line in (artifact_dir / "SHA256SUMS").read_text().splitlines()
               if line.endswith("  manifest.json"))
    volume = tmp_path / "data" / "f5tts"
    volume.mkdir(parents=True)  # as documented: the directory exists, and a missing one is an error
    with serve(artifact_dir) as base:
        args = ["--manifest-url", f"{base}/manifest.json", "--manifest-sha256", sha, "--volume", str(volume),
                "--no-exec"]
        proc, result = _bootstrap(args)
        assert proc.returncode == 0 and result["status"] == "ready", proc.stderr
        env_path = Path(result["path"])
        assert env_path.parent == volume / "envs"
        prefix = subprocess.run([str(env_path / "bin" / "python"), "-c", "import sys; print(sys.prefix)"],
                                capture_output=True, text=True, check=True)
        assert prefix.stdout.strip() == str(env_path)
        again, second = _bootstrap(args)  # as docs/artifact.md says: running it again downloads nothing
    assert again.returncode == 0 and second["status"] == "ready"
    assert second["downloaded_bytes"] == 0
