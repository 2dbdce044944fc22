"""The installer: manifest -> verified, relocated, committed env on the volume. Phases in order.

Warm path (env ready): read the manifest (from the volume's cache when pinned), read the marker and
the tree's stamp, register "in use": a few small files, no hashing, no network when pinned.
Cold path: under the env's lease, download (parallel, resumable) while extracting the same bytes
into the final directory, check every part and the whole archive, relocate, write the marker last.
A committed env is immutable: a manifest with the same ``env_id`` and another archive digest uses the
committed env as it is (both digests logged), before the lease and again under it; it never replaces,
re-extracts or deletes it (a live worker may run from it).
Heavy modules (urllib, zstandard, tarfile) are imported only on the paths that need them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from artifact.files import write_atomic
from artifact.manifest import Manifest, ManifestError, parse_manifest

from . import commit as commit_phase
from . import preflight
from .config import Config
from .errors import BootstrapError
from .layout import INSTALL_ID_FILE, Layout
from .lease import InUse, Lease, LeaseLost
from .progress import Progress

log = logging.getLogger("install")
mlog = logging.getLogger("manifest")

MAX_EXTRACT_ROUNDS = 4


@dataclass
class Result:
    env_id: str
    path: Path
    volume: Path
    downloaded_bytes: int = 0
    warm: bool = False
    waited_s: float = 0.0
    seconds: float = 0.0
    stats: dict[str, Any] = field(default_factory=dict)
    in_use: InUse | None = None
    placement: str = "volume"  # where the env runs from: "volume", or "parts" (the container disk)

    def to_dict(self) -> dict[str, Any]:
        return {"status": "ready", "env_id": self.env_id, "path": str(self.path),
                "downloaded_bytes": self.downloaded_bytes, "warm": self.warm, "volume": str(self.volume),
                "waited_s": round(self.waited_s, 3), "seconds": round(self.seconds, 3),
                "placement": self.placement, **self.stats}


class Phase:
    """Logs a phase's start, end and duration; turns a lost lease into a clear failure."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.log = logging.getLogger(name)

    def __enter__(self) -> Phase:
        self.t0 = time.monotonic()
        self.log.info("start")
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        took = time.monotonic() - self.t0
        if exc is None:
            self.log.info("done in %.2f s", took)
        else:
            self.log.info("failed after %.2f s", took)
        if isinstance(exc, LeaseLost):
            raise BootstrapError("lease", str(exc), "nothing to do: the other installer finishes the job and "
                                 "the next start uses its result") from None


# -- manifest ----------------------------------------------------------------------------------------
def load_manifest(config: Config, layout: Layout | None) -> Manifest:
    if not config.manifest_url:
        raise BootstrapError("manifest", "no manifest URL", "pass --manifest-url or set MANIFEST_URL")
    pin = config.manifest_sha256
    cached = layout.manifests / f"{pin}.json" if (pin and layout) else None
    data: bytes | None = None
    if cached is not None:
        try:
            data = cached.read_bytes()
            if hashlib.sha256(data).hexdigest() != pin:
                data = None
            else:
                mlog.info("using pinned manifest cached at %s", cached)
        except OSError:
            data = None
    if data is None:
        data = _fetch_manifest(config)
        got = hashlib.sha256(data).hexdigest()
        if pin and got != pin:
            raise BootstrapError(
                "manifest",
                f"manifest at {config.manifest_url} has sha256 {got}, but this image is pinned to {pin}",
                "point MANIFEST_URL at the release this image was built for, or rebuild the image with the "
                "new MANIFEST_SHA256")
        if cached is not None:
            try:
                cached.parent.mkdir(parents=True, exist_ok=True)
                write_atomic(cached, data)
            except OSError as exc:
                mlog.warning("could not cache the manifest at %s: %s", cached, exc)
    try:
        return parse_manifest(data)
    except ManifestError as exc:
        raise BootstrapError("manifest", str(exc), "use a manifest.json written by `just pack` (format 1)"
                             ) from None


def transport_for(config: Config) -> Any:
    import urllib.parse

    from .fetch import RetryPolicy, Transport

    return Transport(token=config.token, token_host=urllib.parse.urlsplit(config.manifest_url or "").hostname,
                     timeout_s=config.http_timeout_s,
                     policy=RetryPolicy(attempts=config.retries, backoff_max_s=config.backoff_max_s))


def _fetch_manifest(config: Config) -> bytes:
    assert config.manifest_url
    mlog.info("fetching %s", config.manifest_url)
    return transport_for(config).read_small(config.manifest_url)


# -- the whole install ---------------------------------------------------------------------------------
def install(config: Config, on_layout: Callable[[Layout], None] = lambda _: None) -> Result:
    t0 = time.monotonic()
    with Phase("preflight"):
        volume = preflight.choose_volume(config.volume, config.volume_fallback, config.container_dir)
    layout = Layout(volume)
    on_layout(layout)
    with Phase("manifest"):
        manifest = load_manifest(config, layout if layout.root.is_dir() else None)
        mlog.info("env %s (%s): %d part(s), %.1f MB", manifest.env_id, manifest.name or "unnamed",
                  len(manifest.parts), manifest.archive.size / 1e6)
    from .relocate import destination

    env_dir = destination(manifest.dest_prefix, layout.env_dir(manifest.env_id))
    in_use = _register(layout, manifest.env_id)
    from . import placement

    local = Layout(config.container_dir)
    with Phase("placement"):
        decision = placement.choose(config.placement, layout, local)
    if decision.mode == "parts":
        from . import parts

        result = parts.install(config, layout, local, manifest)
        if result.placement == "parts":
            in_use = _also_register(in_use, local, manifest.env_id)
        result.in_use = in_use
        result.seconds = time.monotonic() - t0
        return result
    path, note = _ready(layout, manifest)
    if path is not None:
        log.info("env %s is ready at %s: nothing to download", manifest.env_id, path)
        return Result(manifest.env_id, path, volume, warm=True, seconds=time.monotonic() - t0, in_use=in_use,
                      stats=note)
    result = _cold(config, layout, manifest, env_dir)
    result.in_use = in_use
    result.seconds = time.monotonic() - t0
    return result


def _ready(layout: Layout, manifest: Manifest) -> tuple[Path | None, dict[str, Any]]:
    """The committed env this manifest names, if any: its own archive's, or one committed from another
    archive of the same env_id, used as it is (an env_id names one environment, and a committed env
    is never changed in place). The second value notes that case for the ready line."""
    path = commit_phase.ready_path(layout, manifest)
    if path is not None:
        return path, {}
    found = commit_phase.committed(layout, manifest.env_id)
    if found is None:
        return None, {}
    path, digest = found
    log.warning("env %s is already committed at %s from archive sha256 %s; this manifest names archive "
                "sha256 %s. Using the committed env as it is: a committed env is never changed. To "
                "install the other archive, give it its own env_id (re-pack it), or remove %s once no "
                "worker runs from it", manifest.env_id, path, digest, manifest.archive.sha256,
                layout.marker(manifest.env_id))
    return path, {"committed_archive_sha256": digest, "manifest_archive_sha256": manifest.archive.sha256}


def _register(layout: Layout, env_id: str) -> InUse | None:
    # Before the marker is read: GC checks registrations after removing a marker (see gc.py).
    try:
        reg = InUse.for_env(layout.in_use_dir(env_id))
        reg.touch()
        return reg
    except OSError as exc:
        log.warning("could not register as a user of %s: %s", env_id, exc)
        return None


def _also_register(in_use: InUse | None, local: Layout, env_id: str) -> InUse | None:
    # The container-disk tree counts as "in use" too, for GC there.
    other = _register(local, env_id)
    if in_use is None or other is None:
        return in_use or other
    return in_use.with_also(other)


def env_lease(config: Config, layout: Layout, env_id: str) -> Lease:
    return Lease(layout.lease(env_id), ttl_s=config.lease_ttl_s, heartbeat_s=config.heartbeat_s,
                 log_every_s=config.progress_s)


def acquire(config: Config, lease: Lease, env_id: str) -> float:
    """Wait for the env's lease (as long as its holder heartbeats, or BOOTSTRAP_WAIT_TIMEOUT); seconds
    waited."""
    t_wait = time.monotonic()
    with Phase("lease"):
        try:
            lease.acquire(timeout_s=config.wait_timeout_s or None)
        except TimeoutError:
            holder = lease.holder() or {}
            raise BootstrapError("lease",
                                 f"another installer (pid {holder.get('pid')} on {holder.get('host')}) "
                                 f"still works on {env_id} after {config.wait_timeout_s:.0f} s",
                                 "raise BOOTSTRAP_WAIT_TIMEOUT, or check that installer's log") from None
    return time.monotonic() - t_wait


def _cold(config: Config, layout: Layout, manifest: Manifest, env_dir: Path) -> Result:
    with Phase("preflight"):
        preflight.check_writable(layout)
    lease = env_lease(config, layout, manifest.env_id)
    waited = acquire(config, lease, manifest.env_id)
    try:
        path, note = _ready(layout, manifest)
        if path is not None:
            log.info("another installer finished %s while we waited %.1f s", manifest.env_id, waited)
            return Result(manifest.env_id, path, layout.root, waited_s=waited, stats=note)
        downloaded, stats = _install_locked(config, layout, manifest, env_dir, lease)
    finally:
        lease.release()
    result = Result(manifest.env_id, env_dir, layout.root, downloaded_bytes=downloaded, waited_s=waited,
                    stats=stats)
    with Phase("gc"):
        from . import gc

        try:
            gc.collect(layout, config.keep_envs, manifest.env_id, config.lease_ttl_s)
        except OSError as exc:
            logging.getLogger("gc").warning("garbage collection failed (the install is fine): %s", exc)
    return result


def _install_locked(config: Config, layout: Layout, manifest: Manifest, env_dir: Path,
                    lease: Lease) -> tuple[int, dict[str, Any]]:
    from . import gc
    from .download import Downloads
    from .parts import parts_ready

    with Phase("preflight"):
        gc.empty_trash(layout)
        if env_dir.exists():
            log.warning("removing the incomplete tree %s left by an interrupted install", env_dir)
            gc.to_trash(layout, env_dir)
        _check_space(config, layout, manifest, env_dir)
    # Parts the volume already keeps (placement "parts" committed them) are read, not downloaded again.
    kept = parts_ready(layout, manifest)
    download_dir = layout.parts_dir(manifest.env_id) if kept else layout.download_dir(manifest.env_id)
    downloads = Downloads(manifest, str(config.manifest_url), download_dir,
                          transport_for(config), config.parallel, check=lease.check)
    # A half-written tree only takes space (a full disk must free itself); parts stay. A lease lost
    # meanwhile means another installer owns the tree now: leave it to that one.
    info = extract_and_commit(config, layout, manifest, env_dir, downloads, lease, owned=lambda: lease.held)
    import shutil

    if not kept:
        shutil.rmtree(download_dir, ignore_errors=True)  # the env holds it all now
    return downloads.network_bytes, info


def extract_and_commit(config: Config, layout: Layout, manifest: Manifest, env_dir: Path, downloads: Any,
                       lease: Any, on_verified: Callable[[], None] | None = None,
                       owned: Callable[[], bool] = lambda: True) -> dict[str, Any]:
    """Parts (arriving, or already on disk) -> verified tree at ``env_dir`` -> relocated -> committed in
    ``layout``, under ``lease``; ``on_verified`` runs once the whole archive verified. A failure moves the
    half-written tree to trash when ``owned()`` says it is still this installer's. Both placements
    install through here (install.py onto the volume, parts.py onto the container disk)."""
    from . import gc
    from .relocate import relocate

    reporter = Progress(downloads, config.progress_s, lease)
    try:
        try:
            with Phase("download"):
                downloads.start()
                reporter.start()
                install_id, stats = _extract_verified(layout, manifest, env_dir, downloads, lease, reporter)
        finally:
            reporter.stop()
            downloads.cancel()
        if on_verified is not None:
            on_verified()
        with Phase("relocate"):
            relocated = relocate(env_dir)
        with Phase("commit"):
            lease.check()
            info = {"files": stats.files, "unpacked_bytes": stats.bytes, "relocated": relocated}
            commit_phase.commit(layout, manifest, env_dir, install_id, info)
    except BaseException:
        if owned():
            try:
                gc.to_trash(layout, env_dir)
            except OSError as exc:
                log.warning("could not remove the incomplete tree %s: %s", env_dir, exc)
        raise
    return info


def _check_space(config: Config, layout: Layout, manifest: Manifest, env_dir: Path) -> None:
    from . import gc

    need = preflight.needed_bytes(manifest.archive.size, manifest.unpacked_size,
                                  preflight.downloaded_bytes(layout.download_dir(manifest.env_id)),
                                  manifest.file_count)
    try:
        preflight.check_space(env_dir.parent, need, layout.root)
    except BootstrapError:
        removed = gc.collect(layout, config.keep_envs, manifest.env_id, config.lease_ttl_s)
        if not removed:
            raise
        preflight.check_space(env_dir.parent, need, layout.root)


def _extract_verified(layout: Layout, manifest: Manifest, env_dir: Path, downloads: Any, lease: Lease,
                      reporter: Progress) -> tuple[str, Any]:
    from artifact.files import sha256_file

    from . import gc
    from .download import StreamRestart
    from .extract import ExtractError, Extractor
    from .stream import ArchiveStream

    for round_ in range(1, MAX_EXTRACT_ROUNDS + 1):
        install_id = commit_phase.new_install_id(env_dir)
        stream = ArchiveStream(downloads)
        extractor = Extractor(env_dir, check=lease.check, keep={INSTALL_ID_FILE},
                              max_bytes=manifest.unpacked_size)
        reporter.extractor = extractor
        try:
            with Phase("extract"):
                extractor.run(stream)
                stream.drain()
            downloads.wait()
            got = stream.sha256.hexdigest()
            if got == manifest.archive.sha256:
                log.info("archive sha256 verified (%s)", got)
                return install_id, extractor.stats
            bad = [f.index for f in downloads.files if sha256_file(f.final) != f.part.sha256]
            if not bad:
                raise BootstrapError("download", f"every part matches its sha256 but the whole archive has "
                                     f"{got}, not {manifest.archive.sha256}",
                                     "the manifest is inconsistent: re-publish the release with `just pack`")
            log.warning("part(s) %s changed on disk after verification: fetching them again",
                        ", ".join(downloads.files[i].part.name for i in bad))
            downloads.redo(bad)
        except StreamRestart as exc:
            log.warning("extraction restarts from verified parts: %s", exc)
            downloads.wait()
        except ExtractError:
            # Bytes that later failed verification can look like a broken archive: blame the
            # archive only when everything the extractor read was verified.
            downloads.wait()
            if not stream.saw_refetched_part():
                raise
            log.warning("extraction read a part that was fetched again: starting over from verified parts")
        finally:
            stream.close()
        gc.to_trash(layout, env_dir)
        if round_ == MAX_EXTRACT_ROUNDS:
            break
    raise BootstrapError("download", f"the archive did not verify after {MAX_EXTRACT_ROUNDS} rounds",
                         "the volume or the network corrupts data: check the volume, then retry")


def record_run(layout: Layout, doc: dict[str, Any]) -> None:
    """One JSON line per run in logs/runs.jsonl; a failure also replaces logs/last-failure.json."""
    try:
        layout.logs.mkdir(parents=True, exist_ok=True)
        line = json.dumps({"time": time.time(), **doc}, default=str)
        with open(layout.logs / "runs.jsonl", "a") as fh:
            fh.write(line + "\n")
        if doc.get("status") == "failed":
            write_atomic(layout.logs / "last-failure.json", line.encode())
    except OSError as exc:
        log.warning("could not write the run log under %s: %s", layout.logs, exc)
