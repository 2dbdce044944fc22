"""A slow volume for this machine: a FUSE passthrough that waits a fixed delay on every file operation.

    python -m devtools.slowfs BACKING MOUNTPOINT --delay-ms 5 [--threads 16]

It models the network volumes of some RunPod data centers, a network filesystem over FUSE where every
file operation is a round trip: each request the kernel sends (lookup, getattr, create, open, read,
write, flush, release, mkdir, unlink, rename, setattr...) sleeps ``--delay-ms`` before it runs on
BACKING. Requests run on a pool of libfuse threads, so concurrent operations overlap as they would on a
network client with several requests in flight. Like such clients it caches: the kernel keeps
attributes and names for a second (libfuse's defaults) and buffers writes (writeback cache), flushing
them in requests of up to 1 MiB; reads come in readahead-sized requests. ``--delay-ms 0`` measures the
FUSE round trip itself (this implementation runs in Python, so it costs tens of microseconds per
request on top of the kernel's own).

``mounted(backing, mountpoint, delay_ms)`` runs it in a child process for the length of a ``with``
block (the bench and the tests use that); the process unmounts when it is told to stop. Needs /dev/fuse,
``fusermount3`` (Debian's fuse3) and root or a user allowed to mount FUSE filesystems.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
_FUSE_CAP_WRITEBACK_CACHE = 1 << 16  # libfuse3's fuse_common.h


class SlowFSError(RuntimeError):
    """The slow volume could not be mounted (no FUSE here, or the daemon died); the message says why."""


def _passthrough_class() -> type:
    import mfusepy  # a development dependency (requirements/dev.txt) on top of Debian's libfuse3

    class SlowPassthrough(mfusepy.Operations):
        use_ns = True

        def __init__(self, backing: str, delay_s: float) -> None:
            self.root = os.path.realpath(backing)
            self.delay_s = delay_s

        # One round trip per request: every operation below starts here.
        def _full(self, path: str) -> str:
            if self.delay_s:
                time.sleep(self.delay_s)
            return self.root + path

        def _wait(self) -> None:
            if self.delay_s:
                time.sleep(self.delay_s)

        def init_with_config(self, conn_info: Any, config_3: Any) -> None:
            if conn_info is not None:
                conn_info.want |= _FUSE_CAP_WRITEBACK_CACHE
                conn_info.max_write = 1 << 20
                conn_info.max_readahead = 1 << 20
            if config_3 is not None:
                config_3.use_ino = 1  # hard links keep one inode number, as tar and pip expect

        def access(self, path: str, amode: int) -> int:
            if not os.access(self._full(path), amode, follow_symlinks=False):
                raise mfusepy.FuseOSError(errno.EACCES)
            return 0

        def getattr(self, path: str, fh: int | None = None) -> dict[str, int]:
            st = os.fstat(fh) if fh is not None else os.lstat(self._full(path))
            if fh is not None:
                self._wait()
            attrs = {key: getattr(st, key) for key in (
                "st_mode", "st_ino", "st_nlink", "st_uid", "st_gid", "st_size", "st_blocks")}
            times = {"st_atime": st.st_atime_ns, "st_mtime": st.st_mtime_ns, "st_ctime": st.st_ctime_ns}
            return attrs | times

        def readdir(self, path: str, fh: int) -> list[tuple[str, dict[str, int], int]]:
            # With use_ino the kernel sees each entry's inode number; a name alone would carry inode 0,
            # which readdir(3) treats as a deleted entry and skips.
            full = self._full(path)
            parent = os.path.dirname(full) if path != "/" else full
            entries = [(".", os.lstat(full)), ("..", os.lstat(parent))]
            with os.scandir(full) as it:
                entries += [(e.name, e.stat(follow_symlinks=False)) for e in it]
            return [(name, {"st_mode": st.st_mode, "st_ino": st.st_ino}, 0) for name, st in entries]

        def readlink(self, path: str) -> str:
            return os.readlink(self._full(path))

        def mknod(self, path: str, mode: int, dev: int) -> int:
            os.mknod(self._full(path), mode, dev)
            return 0

        def mkdir(self, path: str, mode: int) -> int:
            os.mkdir(self._full(path), mode)
            return 0

        def rmdir(self, path: str) -> int:
            os.rmdir(self._full(path))
            return 0

        def unlink(self, path: str) -> int:
            os.unlink(self._full(path))
            return 0

        def symlink(self, target: str, source: str) -> int:
            os.symlink(source, self._full(target))
            return 0

        def link(self, target: str, source: str) -> int:
            os.link(self._full(source), self._full(target), follow_symlinks=False)
            return 0

        def rename(self, old: str, new: str) -> int:
            os.rename(self._full(old), self.root + new)
            return 0

        def chmod(self, path: str, mode: int) -> int:
            os.chmod(self._full(path), mode, follow_symlinks=False)
            return 0

        def chown(self, path: str, uid: int, gid: int) -> int:
            os.chown(self._full(path), uid, gid, follow_symlinks=False)
            return 0

        def truncate(self, path: str, length: int, fh: int | None = None) -> int:
            if fh is not None:
                self._wait()
                os.ftruncate(fh, length)
            else:
                os.truncate(self._full(path), length)
            return 0

        def utimens(self, path: str, times: tuple[int, int] | None = None) -> int:
            os.utime(self._full(path), ns=times, follow_symlinks=False)
            return 0

        @staticmethod
        def _backing_flags(flags: int) -> int:
            # Writeback cache: the kernel may read pages of a file opened write-only, and it applies
            # O_APPEND itself (an O_APPEND fd would ignore the offsets it writes at).
            if flags & os.O_ACCMODE == os.O_WRONLY:
                flags = (flags & ~os.O_ACCMODE) | os.O_RDWR
            return flags & ~os.O_APPEND

        def open(self, path: str, flags: int) -> int:
            return os.open(self._full(path), self._backing_flags(flags))

        def create(self, path: str, mode: int, flags: int = os.O_RDWR) -> int:
            return os.open(self._full(path), self._backing_flags(flags) | os.O_CREAT, mode)

        def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
            self._wait()
            return os.pread(fh, size, offset)

        def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
            self._wait()
            return os.pwrite(fh, data, offset)

        def statfs(self, path: str) -> dict[str, int]:
            st = os.statvfs(self._full(path))
            return {key: getattr(st, key) for key in (
                "f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail", "f_ffree", "f_files", "f_flag",
                "f_frsize", "f_namemax")}

        def flush(self, path: str, fh: int) -> int:
            self._wait()
            return 0

        def release(self, path: str, fh: int) -> int:
            self._wait()
            os.close(fh)
            return 0

        def fsync(self, path: str, datasync: int, fh: int) -> int:
            self._wait()
            if datasync:
                os.fdatasync(fh)
            else:
                os.fsync(fh)
            return 0

    return SlowPassthrough


def serve(backing: Path, mountpoint: Path, delay_ms: float, threads: int = 16) -> None:
    """Mount and serve until unmounted (blocks)."""
    import mfusepy

    ops = _passthrough_class()(str(backing), delay_ms / 1000.0)
    mfusepy.FUSE(ops, str(mountpoint), foreground=True, allow_other=os.geteuid() == 0,
                 default_permissions=True, max_threads=threads, fsname=f"slowfs-{delay_ms:g}ms",
                 subtype="slowfs")


def _unmount(mountpoint: Path) -> None:
    subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], capture_output=True, check=False)


@contextlib.contextmanager
def mounted(backing: Path, mountpoint: Path, delay_ms: float, threads: int = 16,
            timeout_s: float = 30.0) -> Iterator[Path]:
    """The passthrough of ``backing`` mounted at ``mountpoint`` in a child process, for the block."""
    backing.mkdir(parents=True, exist_ok=True)
    mountpoint.mkdir(parents=True, exist_ok=True)
    log = mountpoint.with_name(mountpoint.name + ".slowfs.log")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "devtools.slowfs", str(backing), str(mountpoint),
                                 "--delay-ms", str(delay_ms), "--threads", str(threads)],
                                stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    try:
        deadline = time.monotonic() + timeout_s
        while not os.path.ismount(mountpoint):
            if proc.poll() is not None:
                raise SlowFSError(f"slowfs exited with {proc.returncode} before mounting {mountpoint}: "
                                  f"{log.read_text(errors='replace')[-2000:]}")
            if time.monotonic() > deadline:
                raise SlowFSError(f"slowfs did not mount {mountpoint} within {timeout_s:.0f} s")
            time.sleep(0.02)
        yield mountpoint
    finally:
        _unmount(mountpoint)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        with contextlib.suppress(OSError):
            log.unlink()


def available() -> str | None:
    """None when a slow volume can be mounted here; else why not."""
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing"
    if subprocess.run(["sh", "-c", "command -v fusermount3"], capture_output=True).returncode != 0:
        return "fusermount3 is missing (apt-get install fuse3)"
    try:
        import mfusepy  # noqa: F401
    except (ImportError, OSError) as exc:
        return f"mfusepy cannot load libfuse3: {exc}"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.slowfs", description=__doc__.splitlines()[0])
    parser.add_argument("backing", type=Path, help="directory whose contents the mount shows")
    parser.add_argument("mountpoint", type=Path)
    parser.add_argument("--delay-ms", type=float, default=5.0, help="delay per file operation (default 5)")
    parser.add_argument("--threads", type=int, default=16, help="requests served at once (default 16)")
    args = parser.parse_args(argv)
    serve(args.backing, args.mountpoint, args.delay_ms, args.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
