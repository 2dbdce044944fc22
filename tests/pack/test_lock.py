"""The production spec and its pip lock agree; the example lock is independent of the checkout path."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pack.errors import PackError
from pack.lock import python_version, read_spec
from pack.lockfile import _logical_lines, pip_lock_digest, read_conda_lock

REPO = Path(__file__).resolve().parents[2]


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in _logical_lines(path.read_text()):
        if m := re.match(r"([A-Za-z0-9_.-]+)==(\S+)", line):
            pins[m.group(1).lower().replace("_", "-")] = m.group(2)
    return pins


def test_spec_reads() -> None:
    channels, conda, pip = read_spec(REPO / "environment.yml")
    assert channels == ["conda-forge"]
    assert python_version(conda) == "3.11"
    assert any(s.startswith("ffmpeg") for s in conda) and "pip" in conda
    names = {re.split(r"[<>=~! ;]", r, maxsplit=1)[0].lower() for r in pip}
    assert {"torch", "torchaudio", "f5-tts", "whisperx", "runpod", "huggingface-hub", "soundfile"} <= {
        n.replace("_", "-") for n in names
    }


def test_pip_lock_is_hashed_and_consistent() -> None:
    lock = REPO / "env" / "requirements.lock"
    pip_lock_digest(lock)  # raises on any line without --hash
    pins = _pins(lock)
    assert pins["torch"] == "2.8.0" and pins["torchaudio"] == "2.8.0"  # whisperx: torch~=2.8
    assert pins["whisperx"] == "3.8.6" and pins["f5-tts"] == "1.1.22"
    major, minor = (int(x) for x in pins["numpy"].split(".")[:2])
    assert (major, minor) >= (2, 1)
    rp = tuple(int(x) for x in pins["runpod"].split(".")[:3])
    assert rp >= (1, 10, 1)
    assert "gradio" not in pins  # dropped by env/pip-overrides.txt
    assert any(name.startswith("nvidia-cudnn-cu12") for name in pins)  # CUDA 12 torch wheels


def test_python_pin_required() -> None:
    with pytest.raises(PackError):
        python_version(["pip", "python>=3"])


def test_example_lock_has_relative_urls(example_lock: Path) -> None:
    text = example_lock.read_text()
    assert "file://" not in text and str(example_lock.parent) not in text
    lock = read_conda_lock(example_lock)
    assert [e.filename.rsplit("-", 2)[0] for e in lock.entries] == ["python", "hello-prefix", "hello-noarch"]
    assert all(e.url.startswith(example_lock.parent.as_uri()) for e in lock.entries)
