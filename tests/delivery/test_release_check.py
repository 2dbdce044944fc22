"""`just release TAG` (scripts/release_check.py) on real temporary git repositories: a ready repo passes,
and each thing a tag needs, taken away one at a time, fails with its own clear line. No tag is created."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from pack.spec import read_spec

from .conftest import REPO

CHECK = REPO / "scripts" / "release_check.py"
SHA = hashlib.sha256(b"x").hexdigest()


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


def commit(repo: Path, message: str) -> None:
    git(repo, "add", "-A")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@example.invalid", "commit", "-q", "-m", message)


SPEC = {"channels": ["conda-forge"], "dependencies": ["python=3.11", {"pip": ["torch==2.8.0"]}]}


def write_locks(root: Path) -> None:
    """Locks as `pack lock` heads them: the digest of the spec they were made from."""
    spec = read_spec(root / "environment.yml")
    (root / "env").mkdir(exist_ok=True)
    (root / "env/conda-linux-64.lock").write_text(
        f"# spec-sha256: {spec.conda_digest('linux-64')}\n# python-packages: -\n# platform: linux-64\n"
        f"@EXPLICIT\nhttps://conda.example.invalid/python-3.11.conda#{SHA}\n")
    (root / "env/requirements.lock").write_text(
        f"# spec-sha256: {spec.pip_digest('linux-64', None, {})}\ntorch==2.8.0 \\\n    --hash=sha256:{SHA}\n")


def ready_repo(root: Path) -> Path:
    """A repo a v1.2.0 tag could be cut from: version, changelog, locks, the contract tests."""
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    (root / "pyproject.toml").write_text('[project]\nname = "x"\nversion = "1.2.0"\n')
    (root / "CHANGELOG.md").write_text("# Changelog\n\n## v1.2.0\n\n- first release\n")
    (root / "environment.yml").write_text(yaml.safe_dump(SPEC))
    commit(root, "spec")
    write_locks(root)
    for rel in ("tests/artifact/test_manifest.py", "artifact/__init__.py", "artifact/manifest.py"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, root / rel)
    commit(root, "locks")
    return root


def release_check(repo: Path, tag: str = "v1.2.0", *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(CHECK), tag, "--root", str(repo), "--skip-tests", *extra],
                          capture_output=True, text=True, timeout=300)


def test_a_ready_repo_passes_and_no_tag_is_made(tmp_path: Path) -> None:
    repo = ready_repo(tmp_path / "repo")
    proc = release_check(repo)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "release: v1.2.0 is ready" in proc.stdout
    assert "ok   contract:" in proc.stdout and "passed" in proc.stdout
    tags = subprocess.run(["git", "-C", str(repo), "tag"], capture_output=True, text=True).stdout
    assert tags == ""


def _no_conda_lock(repo: Path) -> None:
    git(repo, "rm", "-q", "env/conda-linux-64.lock")
    commit(repo, "drop lock")


def _unhashed_pip_lock(repo: Path) -> None:
    (repo / "env/requirements.lock").write_text("torch==2.8.0\n")
    commit(repo, "unhashed")


def _stale_lock(repo: Path) -> None:
    (repo / "environment.yml").write_text(yaml.safe_dump({**SPEC, "dependencies": ["python=3.11", "ffmpeg"]}))
    commit(repo, "spec change")


def _dirty(repo: Path) -> None:
    (repo / "notes.txt").write_text("wip\n")


def _other_branch(repo: Path) -> None:
    git(repo, "switch", "-q", "-c", "feature")


def _version_mismatch(repo: Path) -> None:
    (repo / "pyproject.toml").write_text('[project]\nname = "x"\nversion = "1.1.0"\n')
    commit(repo, "version")


def _no_changelog_entry(repo: Path) -> None:
    (repo / "CHANGELOG.md").write_text("# Changelog\n\n## v1.1.0\n")
    commit(repo, "changelog")


def _tag_exists(repo: Path) -> None:
    git(repo, "tag", "v1.2.0")


def _broken_contract(repo: Path) -> None:
    path = repo / "artifact/manifest.py"
    path.write_text(path.read_text().replace("FORMAT = 1", "FORMAT = 2"))
    commit(repo, "break the contract")


CASES: dict[str, tuple[Callable[[Path], None], str, str]] = {
    "missing conda lock": (_no_conda_lock, "locks", "lock workflow"),
    "pip lock without hashes": (_unhashed_pip_lock, "locks", "without --hash"),
    "lock made from another spec": (_stale_lock, "locks", "conda-linux-64.lock: stale"),
    "dirty tree": (_dirty, "clean", "notes.txt"),
    "not on main": (_other_branch, "branch", "not main"),
    "version mismatch": (_version_mismatch, "version", "1.1.0"),
    "no changelog entry": (_no_changelog_entry, "changelog", "no heading for 1.2.0"),
    "tag exists": (_tag_exists, "tag", "already exists"),
    "manifest contract broken": (_broken_contract, "contract", "manifest"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_missing_requirement_fails_clearly(tmp_path: Path, case: str) -> None:
    damage, check, words = CASES[case]
    repo = ready_repo(tmp_path / "repo")
    damage(repo)
    proc = release_check(repo)
    assert proc.returncode == 1, proc.stdout
    failed = [line for line in proc.stdout.splitlines() if line.startswith(f"FAIL {check}:")]
    assert failed and words in failed[0] and " -> " in failed[0], proc.stdout
    assert "NOT ready" in proc.stdout.splitlines()[-1]


def test_bad_tag_format(tmp_path: Path) -> None:
    proc = release_check(ready_repo(tmp_path / "repo"), "1.2")
    assert proc.returncode == 1 and "FAIL tag:" in proc.stdout


def test_ci_mode_on_a_tagged_checkout(tmp_path: Path) -> None:
    repo = ready_repo(tmp_path / "repo")
    git(repo, "tag", "v1.2.0")
    git(repo, "checkout", "-q", "--detach", "v1.2.0")
    assert release_check(repo, "v1.2.0", "--ci").returncode == 0


def _with_hub(repo: Path, manifest_url: str) -> None:
    hub = {"config": {"env": [{"key": "MANIFEST_URL", "input": {"name": "m", "type": "string",
                                                                "default": manifest_url}}]}}
    (repo / ".runpod").mkdir(exist_ok=True)
    (repo / ".runpod" / "hub.json").write_text(json.dumps(hub))
    commit(repo, "hub")


def test_hub_images_must_install_this_repositorys_latest_release(tmp_path: Path, monkeypatch) -> None:
    """The RunPod Hub builds the Dockerfile without build args: hub.json's MANIFEST_URL default is what
    such an image installs, so a release is refused unless it names this repository's latest release."""
    monkeypatch.delenv("GITHUB_REPOSITORY", raising=False)  # set when this suite runs in GitHub Actions
    repo = ready_repo(tmp_path / "repo")
    git(repo, "remote", "add", "origin", "git@github.com:acme/f5-worker.git")
    _with_hub(repo, "https://github.com/<owner>/<repo>/releases/latest/download/manifest.json")
    proc = release_check(repo)
    assert proc.returncode == 1 and "FAIL hub:" in proc.stdout
    assert "set it to https://github.com/acme/f5-worker/releases/latest/download/manifest.json" in proc.stdout
    _with_hub(repo, "https://github.com/someone/else/releases/latest/download/manifest.json")
    assert release_check(repo).returncode == 1
    _with_hub(repo, "https://github.com/acme/f5-worker/releases/latest/download/manifest.json")
    proc = release_check(repo)
    assert proc.returncode == 0, proc.stdout
    assert "ok   hub: Hub images install https://github.com/acme/f5-worker/" in proc.stdout


def test_hub_check_in_ci_compares_with_github_repository(tmp_path: Path, monkeypatch) -> None:
    repo = ready_repo(tmp_path / "repo")
    _with_hub(repo, "https://github.com/acme/f5-worker/releases/latest/download/manifest.json")
    monkeypatch.setenv("GITHUB_REPOSITORY", "other/fork")
    proc = release_check(repo)
    assert proc.returncode == 1 and "other/fork/releases/latest" in proc.stdout


def test_a_comment_in_the_spec_does_not_make_the_locks_stale(tmp_path: Path) -> None:
    repo = ready_repo(tmp_path / "repo")
    spec = repo / "environment.yml"
    spec.write_text("# why these pins: see env/README.md\n" + spec.read_text())
    commit(repo, "explain the spec")
    proc = release_check(repo)
    assert proc.returncode == 0, proc.stdout
    assert "ok   locks:" in proc.stdout
