"""Placement "parts": the volume keeps the verified parts; each container extracts them onto its own disk.

On the volume: ``parts/<env_id>/<part>`` and ``parts/<env_id>.ready.json``, the marker written last,
once every part and the whole archive verified. On the container disk (``BOOTSTRAP_CONTAINER_DIR``): the
env in the same layout and with the same commit as on the volume (``envs/<env_id>/`` + its marker).

A start takes the first of these that applies:
1. this container's disk holds the env (committed): a warm start, two small files read;
2. the volume holds the env extracted (the "volume" placement installed it): used as it is, no download;
3. the volume holds the committed parts: extract them onto the container disk (nothing downloaded; the
   whole-archive sha256 is checked again on the way), relocate, commit locally;
4. nothing yet: under the env's lease on the volume, download the parts onto the volume while the same
   bytes are extracted onto the container disk; verify every part and the whole archive; commit the parts
   (and let the lease go, so the other workers can extract too); relocate; commit locally.
The container-disk work runs under a lease in the container directory, so two installers there never
write one tree. Committed parts that fail the whole-archive check later (damaged on the volume) are
checked one by one under the volume's lease, the bad ones removed and fetched again by step 4.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

from artifact.files import sha256_file, write_atomic
from artifact.manifest import Manifest

from . import preflight
from .config import Config
from .download import Downloads
from .errors import BootstrapError
from .install import Phase, Result, _ready, acquire, env_lease, extract_and_commit, transport_for
from .layout import Layout
from .lease import Lease

log = logging.getLogger("install")

MAX_ROUNDS = 4


class PartsDamaged(Exception):
    """Committed parts on the volume no longer hash to the manifest's digests."""

    def __init__(self, indexes: list[int]) -> None:
        super().__init__(f"parts {indexes} differ from the manifest")
        self.indexes = indexes


class _CommittedParts(Downloads):
    """The parts already on the volume, read in place: nothing is fetched, and bytes that turn out
    wrong are reported (the volume's lease is not held here, so they are not fetched again here)."""

    def redo(self, indexes: list[int]) -> None:
        raise PartsDamaged(indexes)


class _Leases:
    """The leases an extraction works under: checked before every member, progress shown to waiters."""

    def __init__(self, *leases: Lease) -> None:
        self.leases = leases

    def check(self) -> None:
        for lease in self.leases:
            lease.check()

    def set_progress(self, progress: dict[str, Any]) -> None:
        for lease in self.leases:
            lease.set_progress(progress)


def parts_ready(layout: Layout, manifest: Manifest) -> bool:
    """The volume keeps this archive's parts, all of them verified (marker + sizes: no hashing)."""
    marker = read_parts_marker(layout, manifest.env_id)
    if not marker or marker.get("archive_sha256") != manifest.archive.sha256:
        return False
    directory = layout.parts_dir(manifest.env_id)
    try:
        return all((directory / p.name).stat().st_size == p.size for p in manifest.parts)
    except OSError:
        return False


def read_parts_marker(layout: Layout, env_id: str) -> dict[str, Any] | None:
    try:
        doc = json.loads(layout.parts_marker(env_id).read_bytes())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def install(config: Config, volume: Layout, local: Layout, manifest: Manifest) -> Result:
    from .relocate import destination

    env_id = manifest.env_id
    env_dir = destination(manifest.dest_prefix, local.env_dir(env_id))
    # A committed env is immutable whatever the placement: one committed from another archive of the
    # same env_id is used as it is (install._ready logs both digests).
    path, note = _ready(local, manifest)
    if path is not None:
        log.info("env %s is ready on the container disk at %s: nothing to download", env_id, path)
        return Result(env_id, path, volume.root, warm=True, placement="parts", stats=note)
    tree, note = _ready(volume, manifest)
    if tree is not None:
        log.info("env %s is extracted on the volume at %s (placement volume): using it as it is", env_id,
                 tree)
        return Result(env_id, tree, volume.root, warm=True, placement="volume", stats=note)
    with Phase("preflight"):
        preflight.check_writable(local)
    local_lease = env_lease(config, local, env_id)
    waited = acquire(config, local_lease, env_id)
    try:
        for _ in range(MAX_ROUNDS):
            path, note = _ready(local, manifest)
            if path is not None:
                log.info("another installer in this container finished %s", env_id)
                return Result(env_id, path, volume.root, waited_s=waited, placement="parts", stats=note)
            if parts_ready(volume, manifest):
                try:
                    stats = _extract_local(config, volume, local, manifest, env_dir, None, local_lease)
                    return _done(config, volume, local, manifest, env_dir, 0, stats, waited)
                except PartsDamaged as exc:
                    _drop_damaged(config, volume, manifest, exc.indexes)
                    continue
            result = _cold(config, volume, local, manifest, env_dir, local_lease)
            if result is not None:
                result.waited_s += waited
                return result
    finally:
        local_lease.release()
    raise BootstrapError("download", f"the parts of {env_id} on the volume did not verify after {MAX_ROUNDS} "
                         "rounds", "the volume corrupts data: check it (`doctor`), then retry")


def _cold(config: Config, volume: Layout, local: Layout, manifest: Manifest, env_dir: Path,
          local_lease: Lease) -> Result | None:
    """Download the parts onto the volume (extracting them here as they land) under the volume's lease.
    None when another worker committed the parts meanwhile: the caller extracts them."""
    env_id = manifest.env_id
    with Phase("preflight"):
        preflight.check_writable(volume)
    lease = env_lease(config, volume, env_id)
    waited = acquire(config, lease, env_id)
    try:
        if parts_ready(volume, manifest):
            log.info("another worker committed the parts of %s while we waited %.1f s", env_id, waited)
            return None
        tree, note = _ready(volume, manifest)
        if tree is not None:
            return Result(env_id, tree, volume.root, waited_s=waited, placement="volume", stats=note)
        _forget_stale_parts(volume, manifest)
        downloads = Downloads(manifest, str(config.manifest_url), volume.parts_dir(env_id),
                              transport_for(config), config.parallel, check=lease.check)

        def commit_parts() -> None:
            with Phase("commit"):
                lease.check()
                marker = {"env_id": env_id, "archive_sha256": manifest.archive.sha256, "name": manifest.name,
                          "parts": [p.name for p in manifest.parts], "committed_at": time.time()}
                write_atomic(volume.parts_marker(env_id), json.dumps(marker, indent=1).encode())
                logging.getLogger("commit").info("committed the parts of %s on the volume", env_id)
            lease.release()  # the others can extract now; what is left happens on this container's disk

        stats = _extract_local(config, volume, local, manifest, env_dir, downloads,
                               _Leases(lease, local_lease), on_verified=commit_parts)
    finally:
        lease.release()
    result = _done(config, volume, local, manifest, env_dir, downloads.network_bytes, stats, 0.0)
    result.waited_s = waited
    return result


def _extract_local(config: Config, volume: Layout, local: Layout, manifest: Manifest, env_dir: Path,
                   downloads: Downloads | None, leases: Any, on_verified: Any = None) -> dict[str, Any]:
    """Parts (arriving, or committed when ``downloads`` is None) -> verified tree on the container disk,
    relocated and committed there. A failure removes the half-written tree."""
    from . import gc

    env_id = manifest.env_id
    with Phase("preflight"):
        gc.empty_trash(local)
        if env_dir.exists():
            log.warning("removing the incomplete tree %s left by an interrupted install", env_dir)
            gc.to_trash(local, env_dir)
        _check_space(config, volume, local, manifest, env_dir, committed=downloads is None)
    if downloads is None:
        log.info("extracting the parts of %s kept on the volume onto the container disk", env_id)
        downloads = _CommittedParts(manifest, str(config.manifest_url), volume.parts_dir(env_id),
                                    transport_for(config), config.parallel, check=leases.check)
    return extract_and_commit(config, local, manifest, env_dir, downloads, leases, on_verified)


def _done(config: Config, volume: Layout, local: Layout, manifest: Manifest, env_dir: Path, downloaded: int,
          stats: dict[str, Any], waited: float) -> Result:
    from . import gc

    with Phase("gc"):
        for layout in (volume, local):
            try:
                gc.collect(layout, config.keep_envs, manifest.env_id, config.lease_ttl_s)
            except OSError as exc:
                logging.getLogger("gc").warning("garbage collection in %s failed (the install is fine): %s",
                                                layout.root, exc)
    return Result(manifest.env_id, env_dir, volume.root, downloaded_bytes=downloaded, waited_s=waited,
                  stats=stats, placement="parts")


def _forget_stale_parts(volume: Layout, manifest: Manifest) -> None:
    """Under the volume's lease, before downloading: a marker that no longer holds (a part missing, or
    another archive under the same env_id) goes first, then parts of another archive."""
    marker = read_parts_marker(volume, manifest.env_id)
    if marker is None:
        return
    log.warning("the parts of %s on the volume are incomplete or of another archive: fetching what is "
                "missing", manifest.env_id)
    with contextlib.suppress(FileNotFoundError):
        volume.parts_marker(manifest.env_id).unlink()
    if marker.get("archive_sha256") != manifest.archive.sha256:
        shutil.rmtree(volume.parts_dir(manifest.env_id), ignore_errors=True)


def _drop_damaged(config: Config, volume: Layout, manifest: Manifest, indexes: list[int]) -> None:
    """Committed parts that hash wrong: under the volume's lease, un-commit them and remove the bad ones,
    so the next round fetches exactly those."""
    lease = env_lease(config, volume, manifest.env_id)
    acquire(config, lease, manifest.env_id)
    try:
        if not parts_ready(volume, manifest):
            return  # another worker is already on it
        with contextlib.suppress(FileNotFoundError):
            volume.parts_marker(manifest.env_id).unlink()
        directory = volume.parts_dir(manifest.env_id)
        for i in indexes:
            part = manifest.parts[i]
            path = directory / part.name
            with contextlib.suppress(OSError):
                if sha256_file(path) != part.sha256:
                    log.warning("part %s on the volume is damaged: fetching it again", part.name)
                    path.unlink()
    finally:
        lease.release()


def _check_space(config: Config, volume: Layout, local: Layout, manifest: Manifest, env_dir: Path,
                 committed: bool) -> None:
    from . import gc

    size = manifest.archive.size
    checks = [(local, env_dir.parent,
               preflight.needed_bytes(size, manifest.unpacked_size, size, manifest.file_count))]
    if not committed:
        have = preflight.downloaded_bytes(volume.parts_dir(manifest.env_id))
        checks.append((volume, volume.root, preflight.needed_bytes(size, 0, have)))
    for layout, where, need in checks:
        try:
            preflight.check_space(where, need, layout.root)
        except BootstrapError:
            if not gc.collect(layout, config.keep_envs, manifest.env_id, config.lease_ttl_s):
                raise
            preflight.check_space(where, need, layout.root)
