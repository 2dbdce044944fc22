"""scripts/verify_artifact.py, which the pack workflow runs before uploading: it re-hashes every part,
writes a SHA256SUMS that coreutils accepts, and refuses a damaged artifact naming the part."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO

pytestmark = pytest.mark.slow  # uses the session's real pack build
VERIFY = REPO / "scripts" / "verify_artifact.py"


def verify(directory: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(VERIFY), str(directory)], capture_output=True, text=True)


def test_sums_are_what_coreutils_checks(artifact_dir: Path) -> None:
    proc = subprocess.run(["sha256sum", "--strict", "-c", "SHA256SUMS"], cwd=artifact_dir,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    names = [line.split("  ", 1)[1] for line in (artifact_dir / "SHA256SUMS").read_text().splitlines()]
    manifest = json.loads((artifact_dir / "manifest.json").read_text())
    assert names == ["manifest.json", *(p["name"] for p in manifest["parts"])]


def test_a_flipped_byte_is_named(release_copy: Path) -> None:
    part = release_copy / json.loads((release_copy / "manifest.json").read_text())["parts"][0]["name"]
    data = bytearray(part.read_bytes())
    data[100] ^= 1
    part.write_bytes(bytes(data))
    (release_copy / "SHA256SUMS").unlink()
    proc = verify(release_copy)
    assert proc.returncode == 1
    assert f"part {part.name}: sha256" in proc.stderr and "repack" in proc.stderr
    assert not (release_copy / "SHA256SUMS").exists(), "no checksums are written for a bad artifact"


def test_a_short_or_missing_part_is_named(release_copy: Path) -> None:
    parts = json.loads((release_copy / "manifest.json").read_text())["parts"]
    short, gone = release_copy / parts[0]["name"], release_copy / parts[-1]["name"]
    short.write_bytes(short.read_bytes()[:-1])
    gone.unlink()
    proc = verify(release_copy)
    assert proc.returncode == 1
    assert f"part {short.name}: size" in proc.stderr and f"part {gone.name}: missing" in proc.stderr
