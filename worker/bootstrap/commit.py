"""Make an installed tree visible, and tell a complete tree from a broken one without re-hashing it.

The installer writes ``<env>/.bootstrap-install`` (a random install id) before extracting anything and
the marker ``envs/<env_id>.ready.json`` last (temp + fsync + ``os.replace``), naming the same id. A
tree counts as ready only when both agree: a tree re-extracted after a crash, or swapped under an old
marker, never passes. The warm check reads two small files: flat in env size.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import time
from pathlib import Path
from typing import Any

from artifact.files import write_atomic
from artifact.manifest import Manifest

from .errors import BootstrapError
from .layout import INSTALL_ID_FILE, Layout

log = logging.getLogger("commit")


def new_install_id(env_dir: Path) -> str:
    """Stamp a fresh (empty) tree before extraction: this id is what the marker will vouch for."""
    install_id = secrets.token_hex(16)
    env_dir.mkdir(parents=True, exist_ok=False)
    write_atomic(env_dir / INSTALL_ID_FILE, install_id.encode())
    return install_id


def read_marker(layout: Layout, env_id: str) -> dict[str, Any] | None:
    try:
        data = json.loads(layout.marker(env_id).read_bytes())
    except (OSError, ValueError, RecursionError):  # a damaged or hostile marker vouches for nothing
        return None
    return data if isinstance(data, dict) else None


def ready_path(layout: Layout, manifest: Manifest) -> Path | None:
    """The installed env's path when a complete tree for this manifest is there; else None."""
    found = committed(layout, manifest.env_id)
    return found[0] if found is not None and found[1] == manifest.archive.sha256 else None


def committed(layout: Layout, env_id: str) -> tuple[Path, str] | None:
    """(path, archive sha256) of the complete committed tree of ``env_id``, whatever archive it came
    from; None when there is none (no marker, or a tree that is not the one the marker vouches for)."""
    marker = read_marker(layout, env_id)
    if not marker:
        return None
    path = Path(str(marker.get("path")))
    try:
        stamped = (path / INSTALL_ID_FILE).read_text().strip()
    except OSError:
        return None
    return (path, str(marker.get("archive_sha256"))) if stamped == marker.get("install_id") else None


def commit(layout: Layout, manifest: Manifest, env_dir: Path, install_id: str,
           stats: dict[str, Any]) -> dict[str, Any]:
    """Write the marker: from this moment the env is ready."""
    try:
        stamped = (env_dir / INSTALL_ID_FILE).read_text().strip()
    except OSError as exc:
        raise BootstrapError("commit", f"install stamp missing in {env_dir}: {exc}",
                             "another process replaced the tree; the next start reinstalls") from None
    if stamped != install_id:
        raise BootstrapError("commit", f"{env_dir} was replaced by another installer during this install",
                             "the next start uses the other installer's result")
    marker = {"env_id": manifest.env_id, "path": str(env_dir), "install_id": install_id,
              "archive_sha256": manifest.archive.sha256, "name": manifest.name,
              "installed_at": time.time(), **stats}
    write_atomic(layout.marker(manifest.env_id), json.dumps(marker, indent=1).encode())
    log.info("committed %s at %s", manifest.env_id, env_dir)
    return marker


def uncommit(layout: Layout, env_id: str) -> None:
    try:
        os.unlink(layout.marker(env_id))
    except FileNotFoundError:
        pass
