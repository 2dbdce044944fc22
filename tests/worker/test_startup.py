"""Startup wiring that the other tests do not reach: the env's "in use" registration."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from worker import __main__ as startup


def test_hold_env_registers_the_running_worker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """GC on a shared volume keeps an env whose registration is fresh; the worker must create and keep it."""
    path = tmp_path / "in-use" / "host-1.json"
    monkeypatch.setenv("BOOTSTRAP_IN_USE_FILE", str(path))
    startup.hold_env()
    record = json.loads(path.read_text())
    assert record["pid"] == os.getpid()


def test_hold_env_without_installer_does_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BOOTSTRAP_IN_USE_FILE", raising=False)
    monkeypatch.chdir(tmp_path)
    startup.hold_env()
    assert list(tmp_path.iterdir()) == []
