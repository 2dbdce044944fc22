"""``python -m worker.bootstrap doctor --volume DIR``: what is on the volume and what went wrong last.

Read-only: installed envs (and whether each tree still matches its marker), leases and their holders'
progress, downloads in progress, leftovers, free space, and the last failure.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from pathlib import Path
from typing import Any

from .commit import read_marker
from .gc import installed, last_used
from .layout import INSTALL_ID_FILE, MARKER_SUFFIX, Layout
from .lease import Lease, live_users
from .parts import read_parts_marker
from .preflight import downloaded_bytes, free_bytes

log = logging.getLogger("doctor")


def _tree_ok(marker: dict[str, Any]) -> bool:
    with contextlib.suppress(OSError):
        stamp = (Path(str(marker.get("path"))) / INSTALL_ID_FILE).read_text().strip()
        return stamp == marker.get("install_id")
    return False


def report(volume: Path) -> dict[str, Any]:
    layout = Layout(volume)
    doc: dict[str, Any] = {"volume": str(volume), "exists": volume.is_dir()}
    if not volume.is_dir():
        return doc
    doc["free_bytes"] = free_bytes(volume)
    envs, kept_parts = [], []
    for env_id in installed(layout):
        parts = read_parts_marker(layout, env_id)
        if parts is not None:
            kept_parts.append({"env_id": env_id, "name": parts.get("name"),
                               "bytes": downloaded_bytes(layout.parts_dir(env_id)),
                               "live_users": len(live_users(layout.in_use_dir(env_id))),
                               "last_used": last_used(layout, env_id)})
        marker = read_marker(layout, env_id)
        if marker is None:
            continue
        envs.append({"env_id": env_id, "path": marker.get("path"), "name": marker.get("name"),
                     "installed_at": marker.get("installed_at"), "files": marker.get("files"),
                     "unpacked_bytes": marker.get("unpacked_bytes"), "tree_ok": _tree_ok(marker),
                     "live_users": len(live_users(layout.in_use_dir(env_id))),
                     "last_used": last_used(layout, env_id)})
    doc["envs"] = envs
    doc["parts"] = kept_parts
    try:
        doc["placement"] = json.loads(layout.placement_file.read_text())
    except (OSError, ValueError):
        doc["placement"] = None
    ready = {e["env_id"] for e in envs}
    doc["incomplete_trees"] = sorted(p.name for p in layout.envs.glob("*")
                                     if p.is_dir() and p.name not in ready) if layout.envs.is_dir() else []
    leases = []
    if layout.leases.is_dir():
        for path in sorted(layout.leases.glob("*.lease")):
            lease = Lease(path)
            holder = lease.holder()
            if holder is not None:
                leases.append({"env_id": path.name[: -len(".lease")], "holder": holder,
                               "progress": lease.read_progress()})
    doc["leases"] = leases
    dirs = sorted(layout.downloads.iterdir()) if layout.downloads.is_dir() else []
    doc["downloads"] = {p.name: downloaded_bytes(p) for p in dirs if p.is_dir()}
    doc["trash"] = sorted(p.name for p in layout.trash.iterdir()) if layout.trash.is_dir() else []
    try:
        doc["last_failure"] = json.loads((layout.logs / "last-failure.json").read_text())
    except (OSError, ValueError, RecursionError):
        doc["last_failure"] = None
    return doc


def render(doc: dict[str, Any]) -> str:
    lines = [f"volume: {doc['volume']}" + ("" if doc["exists"] else " (MISSING)")]
    if not doc["exists"]:
        return "\n".join(lines)
    lines.append(f"free space: {doc['free_bytes'] / 1e9:.2f} GB")
    lines.append(f"installed envs: {len(doc['envs'])}")
    for e in doc["envs"]:
        age = time.time() - (e["last_used"] or 0)
        lines.append(f"  {e['env_id']} {e['name'] or ''} at {e['path']}: "
                     f"{'ok' if e['tree_ok'] else 'TREE DOES NOT MATCH ITS MARKER'}, {e['files']} files, "
                     f"{(e['unpacked_bytes'] or 0) / 1e9:.2f} GB, {e['live_users']} live worker(s), "
                     f"last used {age / 60:.0f} min ago")
    lines.append(f"envs kept as parts (placement parts): {len(doc['parts'])}")
    for p in doc["parts"]:
        age = time.time() - (p["last_used"] or 0)
        lines.append(f"  {p['env_id']} {p['name'] or ''}: {p['bytes'] / 1e6:,.1f} MB of verified parts, "
                     f"{p['live_users']} live worker(s), last used {age / 60:.0f} min ago")
    recorded = doc.get("placement")
    lines.append(f"placement recorded by auto: {recorded['mode']} ({recorded.get('reason')})" if recorded
                 else "placement recorded by auto: none")
    for name in doc["incomplete_trees"]:
        lines.append(f"  {name}: incomplete (an install was interrupted or is running)")
    lines.append(f"leases held: {len(doc['leases'])}")
    for lease in doc["leases"]:
        h = lease["holder"]
        state = "STALE" if h.get("stale") else "live"
        progress = (lease["progress"] or {}).get("message", "no progress reported")
        lines.append(f"  {lease['env_id']}: pid {h.get('pid')} on {h.get('host')}, {state}, "
                     f"heartbeat {h.get('heartbeat_age_s', 0):.0f} s ago: {progress}")
    lines.append(f"downloads: {len(doc['downloads'])}")
    for env_id, size in doc["downloads"].items():
        lines.append(f"  {env_id}: {size / 1e6:,.1f} MB on disk")
    if doc["trash"]:
        lines.append(f"trash (deleted at next start): {', '.join(doc['trash'])}")
    failure = doc.get("last_failure")
    if failure:
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(failure.get("time", 0)))
        lines.append(f"last failure ({when}): {failure.get('phase')}: {failure.get('error')}")
        if failure.get("remedy"):
            lines.append(f"  remedy: {failure['remedy']}")
    else:
        lines.append("last failure: none recorded")
    return "\n".join(lines)


__all__ = ["MARKER_SUFFIX", "render", "report"]
