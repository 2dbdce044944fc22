"""Remove old envs: keep the ``keep`` most recently used (the current one always), never one in use.

An env is installed when the volume holds its tree (``envs/<id>.ready.json``) or its parts
(``parts/<id>.ready.json``, placement "parts"), or both; removing it removes both.

Removal order makes a concurrent warm start safe: take the env's install lease (skip it if busy),
remove the marker, look for live users *again*, and only then move the tree to ``trash/`` (restoring
the marker when a worker registered meanwhile). A worker registers before it reads the marker, so
either it sees no marker (and installs again, under the same lease) or GC sees it and backs off.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import secrets
import shutil
from pathlib import Path

from artifact.files import write_atomic

from .commit import read_marker, uncommit
from .layout import MARKER_SUFFIX, Layout
from .lease import IN_USE_TTL_S, Lease, live_users

log = logging.getLogger("gc")


def last_used(layout: Layout, env_id: str) -> float:
    times = [0.0]
    for marker in (layout.marker(env_id), layout.parts_marker(env_id)):
        with contextlib.suppress(OSError):
            times.append(marker.stat().st_mtime)
    in_use = layout.in_use_dir(env_id)
    if in_use.is_dir():
        for entry in in_use.iterdir():
            with contextlib.suppress(OSError):
                times.append(entry.stat().st_mtime)
    return max(times)


def _committed(directory: Path) -> set[str]:
    if not directory.is_dir():
        return set()
    return {p.name[: -len(MARKER_SUFFIX)] for p in directory.glob(f"*{MARKER_SUFFIX}")}


def installed(layout: Layout) -> list[str]:
    """Envs whose tree or parts are committed on this volume."""
    return sorted(_committed(layout.envs) | _committed(layout.parts))


def empty_trash(layout: Layout) -> None:
    if layout.trash.is_dir():
        for entry in layout.trash.iterdir():
            shutil.rmtree(entry, ignore_errors=True)


def to_trash(layout: Layout, path: Path) -> None:
    """Move a tree out of sight at once (a rename), then delete it."""
    if not path.exists():
        return
    layout.trash.mkdir(parents=True, exist_ok=True)
    aside = layout.trash / f"{path.name}-{secrets.token_hex(4)}"
    try:
        os.rename(path, aside)
    except OSError as exc:
        if exc.errno != errno.EXDEV:  # a dest_prefix env on another filesystem: delete in place
            raise
        aside = path
    shutil.rmtree(aside, ignore_errors=True)


def collect(layout: Layout, keep: int, current: str | None, lease_ttl_s: float = 30.0,
            in_use_ttl_s: float = IN_USE_TTL_S) -> list[str]:
    """Returns the env ids removed."""
    empty_trash(layout)
    envs = installed(layout)
    others = sorted((e for e in envs if e != current), key=lambda e: last_used(layout, e), reverse=True)
    budget = max(0, keep - (1 if current in envs else 0))
    removed: list[str] = []
    for env_id in others[budget:]:
        if _remove(layout, env_id, lease_ttl_s, in_use_ttl_s):
            removed.append(env_id)
    _orphans(layout, current, lease_ttl_s)
    return removed


def _remove(layout: Layout, env_id: str, lease_ttl_s: float, in_use_ttl_s: float) -> bool:
    users = live_users(layout.in_use_dir(env_id), in_use_ttl_s)
    if users:
        log.info("keeping %s: in use by %d live worker(s)", env_id, len(users))
        return False
    lease = Lease(layout.lease(env_id), ttl_s=lease_ttl_s, heartbeat_s=lease_ttl_s / 6)
    if not lease.try_acquire():
        log.info("keeping %s: another process holds its lease", env_id)
        return False
    try:
        marker = read_marker(layout, env_id)
        parts = _read_bytes(layout.parts_marker(env_id))
        uncommit(layout, env_id)
        with contextlib.suppress(FileNotFoundError):
            layout.parts_marker(env_id).unlink()
        if live_users(layout.in_use_dir(env_id), in_use_ttl_s):
            if marker is not None:
                write_atomic(layout.marker(env_id), json.dumps(marker, indent=1).encode())
            if parts is not None:
                write_atomic(layout.parts_marker(env_id), parts)
            log.info("keeping %s: a worker started using it just now", env_id)
            return False
        path = Path(str((marker or {}).get("path") or layout.env_dir(env_id)))
        log.info("removing env %s at %s", env_id, path)
        to_trash(layout, path)
        to_trash(layout, layout.parts_dir(env_id))
        shutil.rmtree(layout.download_dir(env_id), ignore_errors=True)
        shutil.rmtree(layout.in_use_dir(env_id), ignore_errors=True)
        return True
    finally:
        lease.release()


def _read_bytes(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def _orphans(layout: Layout, current: str | None, lease_ttl_s: float) -> None:
    """Trees and parts without a marker and other envs' downloads, left by crashed installs nobody
    works on."""
    candidates = []
    for directory in (layout.envs, layout.parts):
        if directory.is_dir():
            ready = _committed(directory)
            candidates += [(p.name, p) for p in directory.iterdir()
                           if p.is_dir() and p.name not in ready and p.name != current]
    if layout.downloads.is_dir():
        candidates += [(p.name, p) for p in layout.downloads.iterdir() if p.name != current]
    for env_id, path in candidates:
        lease = Lease(layout.lease(env_id), ttl_s=lease_ttl_s, heartbeat_s=lease_ttl_s / 6)
        if not lease.try_acquire():
            continue
        try:
            log.info("removing leftover %s", path)
            to_trash(layout, path)
        finally:
            lease.release()
