"""`just lint` (scripts/lint.py): every linter runs for real, catches what it is there for, and the
delivery files (workflows, Dockerfile, shell scripts, scripts/*.py) are clean.

Each tool runs on a small git tree made in tmp_path: first the project's own delivery files (must be
clean), then the same tree with one seeded mistake per tool (must be reported, naming the file). The
whole repository's cleanliness is `just lint` itself, which `./dev test` runs before the tests.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO

LINT = REPO / "scripts" / "lint.py"
DELIVERY_FILES = [
    ".github/workflows/ci.yml", ".github/workflows/pack.yml", ".github/workflows/image.yml",
    ".github/workflows/lock.yml", ".github/dependabot.yml", "Dockerfile", ".dockerignore", "dev", ".ci/run",
    "scripts/install-requirements", "scripts/lint.py", "scripts/release_check.py",
    "scripts/verify_artifact.py", "pyproject.toml",
]


def make_tree(root: Path) -> Path:
    for rel in DELIVERY_FILES:
        if (REPO / rel).exists():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, root / rel)
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    return root


def lint(root: Path, tool: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(LINT), "--root", str(root), "--only", tool],
                          capture_output=True, text=True, timeout=300)


def _bad_workflow(root: Path) -> str:
    (root / ".github/workflows/bad.yml").write_text(
        "name: bad\non:\n  issues:\n    types: [opened]\npermissions: {}\njobs:\n  greet:\n"
        "    runs-on: ubuntu-24.04\n    permissions:\n      contents: read\n    steps:\n"
        "      - run: echo \"${{ github.event.issue.title }}\"\n")
    return ".github/workflows/bad.yml"


def _bad_shell(root: Path) -> str:
    (root / "scripts/bad").write_text("#!/usr/bin/env bash\nfiles=$(ls)\nrm $files\n")
    return "scripts/bad"


def _bad_run_block(root: Path) -> str:
    (root / ".github/workflows/shell.yml").write_text(
        "name: shell\non: push\npermissions: {}\njobs:\n  a:\n    runs-on: ubuntu-24.04\n"
        "    permissions:\n      contents: read\n    steps:\n      - name: unquoted\n"
        "        run: |\n          dir=$(mktemp -d)\n          rm -rf $dir/*\n")
    return ".github/workflows/shell.yml"


def _bad_dockerfile(root: Path) -> str:
    (root / "Dockerfile").write_text("FROM python:latest\nRUN apt-get update && apt-get install -y zstd\n")
    return "Dockerfile"


def _bad_python(root: Path) -> str:
    (root / "scripts/bad.py").write_text("import os\n")
    return "scripts/bad.py"


def _unpinned_action(root: Path) -> str:
    (root / ".github/workflows/unpinned.yml").write_text(
        "name: unpinned\non: push\npermissions: {}\njobs:\n  a:\n    runs-on: ubuntu-24.04\n"
        "    permissions:\n      contents: read\n    steps:\n      - uses: actions/checkout@v4\n")
    return ".github/workflows/unpinned.yml"


SEEDED = {
    "ruff": _bad_python,
    "actionlint": _bad_workflow,
    "shellcheck": _bad_shell,
    "zizmor": _unpinned_action,
    "hadolint": _bad_dockerfile,
}


@pytest.fixture(scope="module")
def clean_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tree(tmp_path_factory.mktemp("lint-clean"))


@pytest.mark.parametrize("tool", sorted(SEEDED))
def test_delivery_files_are_clean(clean_tree: Path, tool: str) -> None:
    proc = lint(clean_tree, tool)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"lint: {tool} clean" in proc.stdout


@pytest.mark.parametrize("tool", sorted(SEEDED))
def test_each_linter_reports_a_seeded_mistake(tmp_path: Path, tool: str) -> None:
    root = make_tree(tmp_path / "tree")
    culprit = SEEDED[tool](root)
    proc = lint(root, tool)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert culprit in proc.stdout and f"{tool} FAILED" in proc.stdout


def test_shellcheck_reads_workflow_run_blocks(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "tree")
    culprit = _bad_run_block(root)
    proc = lint(root, "shellcheck")
    assert proc.returncode == 1
    assert f"{culprit} jobs.a.steps[0] (unquoted)" in proc.stdout and "SC2086" in proc.stdout


def test_expressions_in_run_blocks_do_not_confuse_shellcheck(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "tree")
    (root / ".github/workflows/expr.yml").write_text(
        "name: expr\non: push\npermissions: {}\njobs:\n  a:\n    runs-on: ubuntu-24.04\n"
        "    permissions:\n      contents: read\n    steps:\n"
        "      - run: echo \"${{ runner.temp }}\" && test -n \"$GITHUB_SHA\"\n")
    assert lint(root, "shellcheck").returncode == 0
