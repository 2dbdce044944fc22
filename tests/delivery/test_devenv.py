"""devtools/devenv.py's wheelhouse bookkeeping: what is missing is named, a changed file is hashed again."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from devtools import devenv


def _lock(path: Path, **files: bytes) -> Path:
    lines = [f"{name}==1.0 \\\n    --hash=sha256:{hashlib.sha256(data).hexdigest()}"
             for name, data in files.items()]
    path.write_text("# a lock\n" + "\n".join(lines) + "\n")
    return path


def test_missing_requirements_and_backend_are_named(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "a-1.0-py3-none-any.whl").write_bytes(b"a")
    for spec in devenv.SDIST_BUILD_BACKEND[1:]:
        (wheels / (spec.replace("==", "-") + "-py3-none-any.whl")).write_bytes(spec.encode())
    lock = _lock(tmp_path / "requirements.lock", a=b"a", b=b"b")
    assert devenv.wheelhouse_missing(wheels, lock) == ["b==1.0", devenv.SDIST_BUILD_BACKEND[0]]


def test_a_file_changed_in_place_is_hashed_again(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    wheel = wheels / "a-1.0-py3-none-any.whl"
    wheel.write_bytes(b"a")
    assert devenv.wheelhouse_hashes(wheels) == {wheel.name: hashlib.sha256(b"a").hexdigest()}
    assert (wheels / devenv.INDEX_NAME).is_file()  # kept beside the files, not listed as one
    wheel.write_bytes(b"b")
    os.utime(wheel, ns=(1, 1))
    assert devenv.wheelhouse_hashes(wheels) == {wheel.name: hashlib.sha256(b"b").hexdigest()}
