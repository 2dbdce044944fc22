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
import stat
from pathlib import Path

from .config import DEFAULT_VOLUME
from .errors import BootstrapError
from .layout import Layout

log = logging.getLogger("preflight")

# Unpacked size when the manifest does not say: zstd on an env is ~0.2-0.3 of the tar.
_UNPACKED_GUESS = 5
_MARGIN = 1.05
_BLOCK = 4096  # the allocation unit of ext4, xfs and tmpfs pages


def choose_volume(volume: Path, fallback: str, container_dir: Path) -> Path:
    """The volume when it is a directory; when nothing is there, the container disk (loudly) or a
    failure by policy. Something that is there but is no directory (a regular file, a path through
    one, an unreadable mount) is a mistake to fix, never a reason to move the install elsewhere."""
    try:
        info = os.stat(volume)
    except FileNotFoundError:
        info = None
    except OSError as exc:
        raise BootstrapError("preflight", f"volume {volume} cannot be examined: {exc.strerror or exc}",
                             "point --volume / RUNPOD_VOLUME at the volume's mount directory (RunPod: "
                             f"{DEFAULT_VOLUME}) and check its permissions") from None
    if info is not None:
        if stat.S_ISDIR(info.st_mode):
            return volume
        raise BootstrapError("preflight", f"volume {volume} is not a directory (it is a "
                             f"{_kind(info.st_mode)})",
                             "point --volume / RUNPOD_VOLUME at the volume's mount directory (RunPod: "
                             f"{DEFAULT_VOLUME}), not at a file")
    if fallback == "fail":
        raise BootstrapError("preflight", f"volume {volume} does not exist",
                             f"attach a network volume to the endpoint (mounted at {DEFAULT_VOLUME}), or "
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


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISREG, "regular file"), (stat.S_ISCHR, "character device"),
                       (stat.S_ISBLK, "block device"), (stat.S_ISFIFO, "fifo"), (stat.S_ISSOCK, "socket")):
        if test(mode):
            return name
    return "special file"


def needed_bytes(archive_size: int, unpacked_size: int | None, downloaded: int,
                 file_count: int | None = None) -> int:
    """Room for the parts still to download and the extracted env. Every member also takes at least a
    block of its own beyond its bytes (an env of 37k small files: ~100 MB more than its bytes), so the
    manifest's file_count adds a block each: without it, an honest manifest could pass here and then
    fill the disk mid-extraction, start after start."""
    unpacked = unpacked_size if unpacked_size is not None else archive_size * _UNPACKED_GUESS
    return int((archive_size - downloaded + unpacked + (file_count or 0) * _BLOCK) * _MARGIN)


def free_bytes(path: Path) -> int:
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def check_space(where: Path, need: int, volume: Path | None = None) -> None:
    """``where``: the directory the env goes to; ``volume``: the volume root (what doctor reads)."""
    free = free_bytes(where)
    if free < need:
        raise BootstrapError(
            "preflight", f"not enough free space on {where}: need {need / 1e9:.2f} GB "
            f"(parts + unpacked env), have {free / 1e9:.2f} GB",
            "grow the network volume, or remove old envs (`python -m worker.bootstrap doctor --volume "
            f"{volume or where}` lists them; BOOTSTRAP_KEEP_ENVS lowers how many are kept)")
    log.info("free space on %s: %.2f GB, need %.2f GB", where, free / 1e9, need / 1e9)


def downloaded_bytes(directory: Path) -> int:
    total = 0
    if directory.is_dir():
        for entry in directory.iterdir():
            with contextlib.suppress(OSError):
                total += entry.stat().st_size
    return total
