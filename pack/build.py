"""``pack build``: locks -> env -> collected files -> archive parts -> manifest.json (written last)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import time
from dataclasses import dataclass, replace
from importlib import metadata
from pathlib import Path

import zstandard

from artifact.files import sha256_file, write_atomic
from artifact.manifest import MANIFEST_NAME, Archive, Manifest, ManifestError, make_manifest, read_manifest

from . import example
from .archive import ZstdSettings, write_archive
from .collect import collect, load_env
from .create import create_conda_env, pip_install
from .errors import PackError
from .lockfile import find_conda_lock, pip_lock_digest, read_conda_lock
from .options import DEFAULT_SOURCE_DATE_EPOCH, PackOptions

log = logging.getLogger(__name__)

# Bump when the archive layout changes in a way that changes the bytes for the same inputs.
LAYOUT = "pack-1"


@dataclass(frozen=True)
class BuildResult:
    manifest_path: Path
    manifest: Manifest
    prefix: Path


def source_date_epoch(options: PackOptions) -> int:
    if options.source_date_epoch is not None:
        return options.source_date_epoch
    raw = os.environ.get("SOURCE_DATE_EPOCH")
    if raw:
        try:
            return int(raw)
        except ValueError:
            raise PackError("options", f"SOURCE_DATE_EPOCH must be an integer, got {raw!r}") from None
    return DEFAULT_SOURCE_DATE_EPOCH


def env_id(platform: str, locks: dict[str, str], options: PackOptions, epoch: int) -> str:
    """The input address: what decides the archive's bytes, not the bytes themselves."""
    doc = {
        "layout": LAYOUT,
        "platform": platform,
        "locks": locks,
        "level": options.level,
        "long": options.long,
        "dest_prefix": options.dest_prefix,
        "source_date_epoch": epoch,
    }
    if options.prune:  # only when used, so env_ids of packs without pruning stay as they were
        doc["prune"] = sorted(options.prune)
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def build(options: PackOptions) -> BuildResult:
    options = _absolute(options)
    options.validate()
    epoch = source_date_epoch(options)
    lock_path = (
        find_conda_lock(options.lock, options.platform)
        if options.lock
        else example.ensure_example_lock(options.work)
    )
    conda_lock = read_conda_lock(lock_path, options.channels[0] if options.channels else None)
    platform = conda_lock.platform or options.platform
    locks = {lock_path.name: conda_lock.digest}
    if options.pip_lock is not None:
        locks[options.pip_lock.name] = pip_lock_digest(options.pip_lock)
    identity = env_id(platform, locks, options, epoch)
    log.info("build: env_id %s from %s", identity, ", ".join(f"{k}={v[:12]}" for k, v in locks.items()))
    if options.reuse and (previous := reusable(options, identity)) is not None:
        log.info("build: reusing %s: same env_id, every part verified (no env created, nothing packed)",
                 previous.manifest_path)
        return previous

    prefix = options.work / "envs" / options.name
    creator = create_conda_env(conda_lock, prefix, options.work / "pkgs")
    if options.pip_lock is not None:
        pip_install(prefix, options.pip_lock, options.wheelhouse, epoch)
    if options.prune:
        prune_env(prefix, options.prune)

    collected = collect(load_env(prefix), options.dest_prefix)
    options.out.mkdir(parents=True, exist_ok=True)
    _remove_previous(options.out, options.name)
    stem = f"{options.name}-{identity[:12]}.tar.zst"
    started = time.monotonic()
    result = write_archive(
        collected.entries,
        options.out,
        stem,
        options.part_size,
        ZstdSettings(options.level, options.threads, options.long),
        epoch,
    )
    log.info(
        "build: %d members, %.1f MB -> %.1f MB (%.3f) in %.0f s, %d part(s)",
        result.file_count,
        result.unpacked_size / 1e6,
        result.size / 1e6,
        result.size / max(result.unpacked_size, 1),
        time.monotonic() - started,
        len(result.parts),
    )

    extra: dict[str, object] = {
        "name": options.name,
        "platform": platform,
        "prefix": str(prefix),
        "relocatable": options.dest_prefix is None,
        "unpacked_size": result.unpacked_size,
        "file_count": result.file_count,
        "created": epoch,
        "locks": locks,
        "tools": _tools(creator),
        "pack_options": _pack_options(options),
    }
    if options.dest_prefix is not None:
        extra["dest_prefix"] = options.dest_prefix
    if collected.max_placeholder is not None and options.dest_prefix is None:
        extra["max_prefix_length"] = collected.max_placeholder
    manifest = make_manifest(identity, Archive("zstd", result.size, result.sha256), result.parts, **extra)
    path = options.out / MANIFEST_NAME
    write_atomic(path, manifest.to_json().encode())
    log.info("build: wrote %s", path)
    return BuildResult(path, manifest, prefix)


def _absolute(options: PackOptions) -> PackOptions:
    def fix(p: Path | None) -> Path | None:
        return None if p is None else Path(os.path.abspath(p))

    return replace(
        options,
        lock=fix(options.lock),
        pip_lock=fix(options.pip_lock),
        wheelhouse=fix(options.wheelhouse),
        out=fix(options.out),
        work=fix(options.work),
    )


def prune_env(prefix: Path, patterns: tuple[str, ...]) -> None:
    """Remove pip-installed (unmanaged) files matching the globs. Files of conda packages are refused:
    conda-pack rightly treats a conda package with missing files as a broken env."""
    managed: dict[str, str] = {}
    for record in (prefix / "conda-meta").glob("*.json"):
        meta = json.loads(record.read_text())
        for rel in meta.get("files", []):
            managed[rel] = f"{meta.get('name')} {meta.get('version')}"
    for pattern in patterns:
        hits = [p for p in sorted(prefix.glob(pattern)) if p.is_file() or p.is_symlink()]
        owned = [f"{p.relative_to(prefix)} ({managed[str(p.relative_to(prefix))]})" for p in hits
                 if str(p.relative_to(prefix)) in managed]
        if owned:
            raise PackError("prune", f"--prune {pattern} matches files of conda packages: {', '.join(owned)}",
                            "prune only pip-installed files; change the conda package's recipe instead")
        for path in hits:
            path.unlink()
        log.info("build: pruned %d file(s) matching %s", len(hits), pattern)


def reusable(options: PackOptions, identity: str) -> BuildResult | None:
    """The pack already in --out, if it was built from the same inputs and its parts verify."""
    path = options.out / MANIFEST_NAME
    try:
        manifest = read_manifest(path)
    except ManifestError as exc:
        log.info("build: no reusable pack in %s (%s)", options.out, exc)
        return None
    if manifest.env_id != identity:
        log.info("build: %s holds env_id %s, not %s: building", path, manifest.env_id[:12], identity[:12])
        return None
    if any(p.size != options.part_size for p in manifest.parts[:-1]):
        log.info("build: %s was split at another part size: building", path)
        return None
    for part in manifest.parts:
        part_path = options.out / part.name
        intact = part_path.is_file() and part_path.stat().st_size == part.size
        if not intact or sha256_file(part_path) != part.sha256:
            log.info("build: part %s is missing or does not verify: building", part.name)
            return None
    return BuildResult(path, manifest, options.work / "envs" / options.name)


def _remove_previous(out: Path, name: str) -> None:
    # The manifest goes first: parts on disk without a manifest are never mistaken for a finished pack.
    (out / MANIFEST_NAME).unlink(missing_ok=True)
    for old in out.glob(f"{name}-*.tar.zst.[0-9][0-9][0-9]"):
        old.unlink()


def _pack_options(options: PackOptions) -> dict[str, object]:
    return {
        "level": options.level,
        "threads": options.threads,
        "long": options.long,
        "part_size": options.part_size,
        "dest_prefix": options.dest_prefix,
        "prune": list(options.prune),
    }


def _tools(creator: str) -> dict[str, str]:
    tools = {
        "conda-pack": _version("conda-pack"),
        "zstandard": _version("zstandard"),
        "libzstd": zstandard.ZSTD_VERSION and ".".join(map(str, zstandard.ZSTD_VERSION)),
        "python": ".".join(map(str, sys.version_info[:3])),
        "env-creator": creator,
    }
    if creator == "rattler":
        tools["py-rattler"] = _version("py-rattler")
    return tools


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "unknown"
