"""The extractor's writes (worker/bootstrap/extract.py): new files only, created without following links,
filled and given their mode and mtime, on a few threads (``Writers``) so file creation overlaps header
parsing and decompression. Part of the extract phase."""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor


class Writers:
    """A few threads that create and fill files (the syscalls release the GIL), so file creation
    overlaps header parsing and decompression. Bounded by bytes in flight; errors surface in order."""

    def __init__(self, threads: int = 3, max_bytes: int = 64 << 20,
                 on_error: Callable[[str, OSError], Exception] = lambda name, exc: exc) -> None:
        self.on_error = on_error  # a failed write of a member -> the error that names it
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="write")
        self.pending: deque[tuple[Future[None], int, str]] = deque()
        self.in_flight = 0
        self.max_bytes = max_bytes

    def submit(self, name: str, size: int, fn: Callable[..., None], *args: object) -> None:
        while self.pending and (self.in_flight + size > self.max_bytes or len(self.pending) > 512):
            self._reap_one()
        self.pending.append((self.pool.submit(fn, *args), size, name))
        self.in_flight += size

    def _reap_one(self) -> None:
        future, size, name = self.pending.popleft()
        self.in_flight -= size
        try:
            future.result()
        except OSError as exc:
            raise self.on_error(name, exc) from None

    def drain(self) -> None:
        while self.pending:
            self._reap_one()

    def close(self) -> None:
        for future, _, _ in self.pending:
            future.cancel()
        self.pool.shutdown(wait=True)


# A new file only: never follow a link or reuse a name another member (or an attacker) put there.
CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def set_meta(fd: int, mode: int, mtime_ns: int | None) -> None:
    if mode & ~UMASK != mode:  # bits the umask dropped at creation
        os.fchmod(fd, mode)
    if mtime_ns is not None:
        os.utime(fd, ns=(mtime_ns, mtime_ns))


def write_small(path: str, data: bytes, mode: int, mtime_ns: int | None) -> None:
    fd = os.open(path, CREATE, mode)
    try:
        write_all(fd, data)
        set_meta(fd, mode, mtime_ns)
    finally:
        os.close(fd)


def current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


UMASK = current_umask()
