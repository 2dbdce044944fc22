"""Create the environment from the locks: conda part (micromamba or py-rattler), then the pip part."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from . import agree
from .errors import PackError
from .lockfile import CondaLock, fetch_packages

log = logging.getLogger(__name__)


def create_conda_env(
    lock: CondaLock, prefix: Path, pkgs_dir: Path, use_micromamba: bool | None = None
) -> str:
    """Create ``prefix`` afresh from ``lock``; returns the tool used ("micromamba" or "rattler").

    The package cache ``pkgs_dir`` must outlive the env: conda-pack reads prefix placeholders from it.
    """
    if prefix.exists():
        shutil.rmtree(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    pkgs_dir.mkdir(parents=True, exist_ok=True)
    micromamba = shutil.which("micromamba")
    if use_micromamba is None:
        use_micromamba = micromamba is not None
    if use_micromamba:
        if micromamba is None:
            raise PackError(
                "create", "micromamba was requested but is not on PATH", "install it or drop the flag"
            )
        _create_micromamba(micromamba, lock, prefix, pkgs_dir)
        return "micromamba"
    _create_rattler(lock, prefix, pkgs_dir)
    return "rattler"


def _create_micromamba(exe: str, lock: CondaLock, prefix: Path, pkgs_dir: Path) -> None:
    # micromamba checks the url#sha256 of every package it downloads; relative URLs are resolved here.
    with tempfile.NamedTemporaryFile("w", suffix=".lock", delete=False) as fh:
        fh.write(lock.resolved_text())
    env = dict(
        os.environ, CONDA_PKGS_DIRS=str(pkgs_dir), MAMBA_ROOT_PREFIX=str(pkgs_dir.parent / "mamba-root")
    )
    cmd = [exe, "create", "--yes", "--quiet", "--prefix", str(prefix), "--file", fh.name]
    log.info("creating %s with micromamba from %s (%d packages)", prefix, lock.path, len(lock.entries))
    try:
        _run(cmd, env, "create", "micromamba could not create the env from the lock")
    finally:
        os.unlink(fh.name)


def _create_rattler(lock: CondaLock, prefix: Path, pkgs_dir: Path) -> None:
    from rattler import RepoDataRecord, install

    files = fetch_packages(lock, pkgs_dir.parent / "downloads")
    log.info("creating %s with py-rattler from %s (%d packages)", prefix, lock.path, len(files))

    async def _go() -> None:
        records = [await RepoDataRecord.from_package_archive(f) for f in files]
        await install(records, prefix, cache_dir=pkgs_dir, show_progress=False, execute_link_scripts=False)

    try:
        asyncio.run(_go())
    except Exception as exc:  # rattler raises its own exception types; all mean "could not create"
        raise PackError(
            "create",
            f"py-rattler could not create {prefix}: {exc}",
            "check that the lock's packages are valid conda packages for this platform",
        ) from exc


def pip_install(prefix: Path, pip_lock: Path, wheelhouse: Path | None, source_date_epoch: int) -> None:
    """Install the hashed pip lock with the env's own pip, no dependency resolution."""
    python = prefix / "bin" / "python"
    if not python.exists():
        raise PackError(
            "pip",
            f"the env has no bin/python at {python}",
            "the conda lock must include python and pip for a pip lock to be installed",
        )
    # Before pip touches anything: a pinned version other than the one conda installed would make pip
    # replace conda's files (conda-pack then refuses the env).
    agree.check_prefix(prefix, pip_lock)
    # -I -B: ignore user site and PYTHON* vars, and do not write .pyc files for pip itself.
    cmd = [
        str(python),
        "-I",
        "-B",
        "-m",
        "pip",
        "install",
        "--no-deps",
        "--require-hashes",
        "--no-input",
        "--disable-pip-version-check",
        "--no-warn-script-location",
        "-r",
        str(pip_lock),
    ]
    if wheelhouse is not None:
        if not wheelhouse.is_dir():
            raise PackError(
                "pip", f"wheelhouse {wheelhouse} is not a directory", "pass an existing --wheelhouse DIR"
            )
        cmd += ["--no-index", "--find-links", str(wheelhouse)]
    # SOURCE_DATE_EPOCH makes pip's byte-compilation write hash-based .pyc files: identical bytes on
    # every build and still valid after extraction resets the mtimes.
    env = dict(os.environ, SOURCE_DATE_EPOCH=str(source_date_epoch))
    if wheelhouse is not None:
        env.pop("PIP_FIND_LINKS", None)
        env["PIP_CONFIG_FILE"] = os.devnull
    log.info("pip: installing %s into %s%s", pip_lock, prefix, f" from {wheelhouse}" if wheelhouse else "")
    _run(cmd, env, "pip", "pip could not install the pip lock")


def _run(cmd: list[str], env: dict[str, str], phase: str, what: str) -> None:
    proc = subprocess.run(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False
    )
    for line in proc.stdout.splitlines():
        log.debug("%s: %s", phase, line)
    if proc.returncode == 0:
        return
    out = proc.stdout
    if "DO NOT MATCH THE HASHES" in out or "do not match the hashes" in out.lower():
        details = [
            ln.strip() for ln in out.splitlines() if "Expected sha256" in ln or "Got" in ln or "==" in ln
        ]
        raise PackError(
            phase,
            "a wheel's hash does not match the pip lock: " + " | ".join(details[:6]),
            "the wheel changed after locking: regenerate the pip lock or restore the wheel",
        )
    tail = " | ".join(ln.strip() for ln in out.strip().splitlines()[-6:])
    raise PackError(
        phase, f"{what} (exit {proc.returncode}): {tail}", "read the lines above and fix the lock"
    )
