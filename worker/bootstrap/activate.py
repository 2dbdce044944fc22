"""Activate the installed env and exec ``<env>/bin/python -m worker`` in it.

Activation = what ``conda activate`` would leave behind: PATH, CONDA_PREFIX, CONDA_DEFAULT_ENV and
the effects of ``etc/conda/activate.d/*.sh``, captured by sourcing them in bash and reading ``env -0``.
The worker's code ships in the image, not in the env: PYTHONPATH gets the directory that holds the
running ``worker`` package.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import NoReturn

from .errors import BootstrapError

log = logging.getLogger("activate")

# The directory holding the ``worker`` package this bootstrap runs from.
CODE_ROOT = Path(__file__).resolve().parents[2]
_SOURCE_ALL = 'for f in "$1"/etc/conda/activate.d/*.sh; do [ -f "$f" ] && . "$f"; done; env -0'


def activated_environ(env_dir: Path, base: Mapping[str, str], extra: Mapping[str, str] | None = None
                      ) -> dict[str, str]:
    environ = dict(base)
    environ.update(extra or {})
    environ["PATH"] = f"{env_dir / 'bin'}{os.pathsep}{base.get('PATH', '/usr/bin:/bin')}"
    environ["CONDA_PREFIX"] = str(env_dir)
    environ["CONDA_DEFAULT_ENV"] = str(env_dir)
    environ["CONDA_SHLVL"] = "1"
    environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(CODE_ROOT), base.get("PYTHONPATH", "")) if p)
    environ.pop("PYTHONHOME", None)
    scripts = env_dir / "etc" / "conda" / "activate.d"
    if scripts.is_dir() and any(scripts.glob("*.sh")):
        environ = _source_scripts(env_dir, environ)
    return environ


def _source_scripts(env_dir: Path, environ: dict[str, str]) -> dict[str, str]:
    bash = shutil.which("bash", path=environ.get("PATH"))
    if bash is None:
        raise BootstrapError("activate", f"{env_dir}/etc/conda/activate.d has scripts but bash is missing",
                             "install bash in the image")
    proc = subprocess.run([bash, "-c", _SOURCE_ALL, "bash", str(env_dir)], env=environ, capture_output=True,
                          timeout=120, check=False)
    if proc.returncode != 0:
        tail = proc.stderr.decode(errors="replace").strip()[-500:]
        raise BootstrapError("activate", f"sourcing {env_dir}/etc/conda/activate.d failed: {tail}",
                             "fix the activation script in the env's packages, then repack")
    out: dict[str, str] = {}
    for item in proc.stdout.split(b"\0"):
        key, sep, value = item.decode(errors="surrogateescape").partition("=")
        if sep and key and key not in ("_", "SHLVL", "PWD", "OLDPWD"):
            out[key] = value
    return out


def exec_worker(env_dir: Path, environ: Mapping[str, str], args: list[str] | None = None) -> NoReturn:
    python = env_dir / "bin" / "python"
    if not os.access(python, os.X_OK):
        raise BootstrapError("activate", f"{python} is missing or not executable",
                             "the artifact is not a Python env: rebuild it with `just pack`")
    argv = [str(python), "-m", "worker", *(args or [])]
    log.info("exec %s", " ".join(argv))
    sys.stdout.flush()
    sys.stderr.flush()
    for handler in logging.getLogger().handlers:
        handler.flush()
    try:
        os.execve(argv[0], argv, dict(environ))
    except OSError as exc:
        raise BootstrapError("activate", f"could not exec {python}: {exc.strerror}",
                             "the env's python does not run on this image (platform mismatch?)") from None
