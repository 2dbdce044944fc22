"""Each refusal: a clear PackError naming the phase, what is wrong and what to do."""

from __future__ import annotations

import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest
from packtest_helpers import build_wheel, options_for, pip_lock_for

from pack.build import build
from pack.collect import load_env
from pack.create import create_conda_env
from pack.errors import PackError
from pack.lockfile import read_conda_lock


def test_dest_prefix_longer_than_placeholder(work: Path, example_lock: Path, tmp_path: Path) -> None:
    with pytest.raises(PackError) as err:
        build(options_for(work, tmp_path, dest_prefix="/" + "d" * 300))
    assert err.value.phase == "options" and "255" in str(err.value) and "301 characters" in str(err.value)


def test_conda_package_hash_mismatch(work: Path, example_lock: Path, tmp_path: Path) -> None:
    lock = read_conda_lock(example_lock)
    bad = lock.resolved_text().replace(lock.entries[1].sha256, "0" * 64)
    (tmp_path / "bad.lock").write_text(bad)
    with pytest.raises(PackError) as err:
        build(options_for(work, tmp_path / "out", lock=tmp_path / "bad.lock", name="bad"))
    msg = str(err.value)
    assert err.value.phase == "verify" and lock.entries[1].filename in msg
    assert "0" * 64 in msg and lock.entries[1].sha256 in msg
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_wheel_hash_mismatch(work: Path, example_lock: Path, tmp_path: Path) -> None:
    wheel = build_wheel(tmp_path / "wh")
    pip_lock = pip_lock_for(wheel, tmp_path / "req.lock", sha256="f" * 64)
    with pytest.raises(PackError) as err:
        build(
            options_for(
                work, tmp_path / "out", pip_lock=pip_lock, wheelhouse=tmp_path / "wh", name="badwheel"
            )
        )
    assert err.value.phase == "pip" and "hash does not match" in str(err.value)
    assert "f" * 64 in str(err.value)


def test_unhashed_pip_lock(work: Path, tmp_path: Path) -> None:
    (tmp_path / "req.lock").write_text("tinypkg==1.0.0\n")
    with pytest.raises(PackError) as err:
        build(options_for(work, tmp_path / "out", pip_lock=tmp_path / "req.lock"))
    assert err.value.phase == "lock" and "without --hash" in str(err.value)


def test_package_cache_missing(example_lock: Path, tmp_path: Path) -> None:
    prefix, pkgs = tmp_path / "env", tmp_path / "pkgs"
    create_conda_env(read_conda_lock(example_lock), prefix, pkgs)
    assert load_env(prefix).files  # with the cache: fine
    shutil.rmtree(pkgs)
    with pytest.raises(PackError) as err:
        load_env(prefix)
    assert (
        err.value.phase == "collect"
        and "package cache" in str(err.value)
        and "hello-prefix" in str(err.value)
    )


_BACKEND = '''
"""A minimal in-tree PEP 660 backend: an editable wheel holding one .pth pointing at src/."""
import base64, hashlib, os, zipfile

NAME, VERSION = "editme", "0.1"
SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "src")


def _wheel(directory, files):
    info = f"{NAME}-{VERSION}.dist-info"
    files = dict(files)
    files[f"{info}/METADATA"] = f"Metadata-Version: 2.1\\nName: {NAME}\\nVersion: {VERSION}\\n"
    files[f"{info}/WHEEL"] = ("Wheel-Version: 1.0\\nGenerator: t\\nRoot-Is-Purelib: true\\n"
                              "Tag: py3-none-any\\n")
    rec = "".join(
        f"{p},sha256={base64.urlsafe_b64encode(hashlib.sha256(d.encode()).digest()).rstrip(b'=').decode()},"
        f"{len(d.encode())}\\n" for p, d in files.items())
    files[f"{info}/RECORD"] = rec + f"{info}/RECORD,,\\n"
    name = f"{NAME}-{VERSION}-py3-none-any.whl"
    with zipfile.ZipFile(os.path.join(directory, name), "w") as zf:
        for p, d in files.items():
            zf.writestr(p, d)
    return name


def build_editable(wheel_directory, config_settings=None, metadata_directory=None):
    return _wheel(wheel_directory, {f"_{NAME}.pth": SRC + "\\n"})


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    raise RuntimeError("editable only")
'''


def test_editable_install_refused(example_lock: Path, tmp_path: Path) -> None:
    prefix = tmp_path / "env"
    create_conda_env(read_conda_lock(example_lock), prefix, tmp_path / "pkgs")
    project = tmp_path / "proj"
    (project / "src" / "editme").mkdir(parents=True)
    (project / "src" / "editme" / "__init__.py").write_text("")
    (project / "backend.py").write_text(textwrap.dedent(_BACKEND))
    (project / "pyproject.toml").write_text(
        '[build-system]\nrequires = []\nbuild-backend = "backend"\nbackend-path = ["."]\n'
    )
    subprocess.run(
        [
            str(prefix / "bin/python"),
            "-m",
            "pip",
            "install",
            "--no-index",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-e",
            str(project),
        ],
        check=True,
        capture_output=True,
    )
    with pytest.raises(PackError) as err:
        load_env(prefix)
    assert err.value.phase == "collect" and "editable" in str(err.value) and "editme" in str(err.value)
