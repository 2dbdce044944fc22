"""Before writing anything big: which directory is the volume, is it writable, is there room.

A missing volume (no network volume attached to the endpoint) falls back to the container disk with
a loud warning, or fails when ``BOOTSTRAP_VOLUME_FALLBACK=fail``.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import secrets
import shutil
from pathlib import Path

from .errors import BootstrapError
from .layout import Layout

log = logging.getLogger("preflight")

# Unpacked size when the manifest does not say: zstd on an env is ~0.2-0.3 of the tar.
_UNPACKED_GUESS = 5
_MARGIN = 1.05


def choose_volume(volume: Path, fallback: str, container_dir: Path) -> Path:
    if volume.is_dir():
        return volume
    if fallback == "fail":
        raise BootstrapError("preflight", f"volume {volume} does not exist",
                             "attach a network volume to the endpoint (mounted at /runpod-volume), or "
                             "set BOOTSTRAP_VOLUME_FALLBACK=container to install on the container disk")
    log.warning("!" * 78)
    log.warning("VOLUME %s IS MISSING: installing on the container disk at %s instead.",
                volume, container_dir)
    log.warning("Every cold start will download the environment again. Attach a network volume.")
    log.warning("!" * 78)
    return container_dir


def check_writable(layout: Layout) -> None:
    try:
        layout.ensure()
        probe = layout.root / f".write-probe-{secrets.token_hex(4)}"
        with open(probe, "wb") as fh:
            fh.write(b"ok")
            fh.flush()
            os.fsync(fh.fileno())
        probe.unlink()
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise BootstrapError("preflight", f"volume {layout.root} is full (no space left on device)",
                                 "grow the network volume or remove old envs (`python -m worker.bootstrap "
                                 "doctor` lists them)") from None
        raise BootstrapError("preflight", f"volume {layout.root} is not writable: {exc.strerror or exc}",
                             "mount the volume read-write, or check its permissions and free space") from None


def needed_bytes(archive_size: int, unpacked_size: int | None, downloaded: int) -> int:
    unpacked = unpacked_size if unpacked_size is not None else archive_size * _UNPACKED_GUESS
    return int((archive_size - downloaded + unpacked) * _MARGIN)


def free_bytes(path: Path) -> int:
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def check_space(where: Path, need: int) -> None:
    free = free_bytes(where)
    if free < need:
        raise BootstrapError(
            "preflight", f"not enough free space on {where}: need {need / 1e9:.2f} GB "
            f"(parts + unpacked env), have {free / 1e9:.2f} GB",
            "grow the network volume, or remove old envs (`python -m worker.bootstrap doctor --volume "
            f"{where}` lists them; BOOTSTRAP_KEEP_ENVS lowers how many are kept)")
    log.info("free space on %s: %.2f GB, need %.2f GB", where, free / 1e9, need / 1e9)


def downloaded_bytes(directory: Path) -> int:
    total = 0
    if directory.is_dir():
        for entry in directory.iterdir():
            with contextlib.suppress(OSError):
                total += entry.stat().st_size
    return total
