"""The parts, concatenated, read back as the one archive stream the extractor takes, while the download
(worker/bootstrap/download.py) is still running: ``ArchiveStream`` follows each part as it lands, hashes
what it hands out (the whole-archive digest) and reads a part that is already complete ahead in parallel
(``ReadAhead``), since a network volume answers each read after a round trip. Part of the download phase:
its logger and errors are the download's.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor

from .download import Downloads, PartFile, StreamRestart
from .fetch import CHUNK

log = logging.getLogger("download")

# A part that is complete on disk when the stream reaches it is read ahead in blocks of this size by this
# many threads at once: on a network volume every read is a round trip (the kernel asks for 128 KiB at a
# time), and one sequential reader waits for each in turn (bench/slow_volume.py: 26 MB/s at 5 ms/op).
READ_AHEAD_BLOCK = 4 << 20
READ_AHEAD_DEPTH = 8


class ArchiveStream(io.RawIOBase):
    """The parts, concatenated, as one readable stream, following the downloads as they land.

    Hashes everything it hands out (the whole-archive digest). Raises ``StreamRestart`` when a part
    it already read from is fetched again.
    """

    def __init__(self, downloads: Downloads) -> None:
        super().__init__()
        self.dl = downloads
        self.sha256 = hashlib.sha256()
        self.position = 0
        self._index = 0
        self._pos = 0
        self._fh: io.BufferedReader | None = None
        self._ahead: ReadAhead | None = None
        self._gen = -1
        self.seen: dict[int, int] = {}  # part index -> generation this stream read from

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        dl = self.dl
        while True:
            if self._index >= len(dl.files):
                return 0
            f = dl.files[self._index]
            if self._pos >= f.part.size:
                self._next()
                continue
            with dl._cond:
                while True:
                    if self._fh is not None and dl.generation[f.index] != self._gen:
                        raise StreamRestart(f"part {f.part.name} was fetched again")
                    if dl.available[f.index] > self._pos:
                        break
                    if dl.error is not None:
                        raise dl.error
                    dl._cond.wait(1.0)
                limit = dl.available[f.index] - self._pos
                complete = dl.available[f.index] >= f.part.size
                if self._fh is None:
                    self._gen = self.seen[f.index] = dl.generation[f.index]
            if self._fh is None:
                self._fh = _open_either(f)
                self._fh.seek(self._pos)
                if complete:
                    self._ahead = ReadAhead(self._fh.fileno(), self._pos, f.part.size)
            view = memoryview(buffer)[: min(len(buffer), limit)]
            n = self._ahead.readinto(view) if self._ahead is not None else self._fh.readinto(view)
            if not n:
                raise StreamRestart(f"part {f.part.name} shrank while being read")
            self.sha256.update(view[:n])
            self._pos += n
            self.position += n
            return n

    def _next(self) -> None:
        self._close_part()
        self._index += 1
        self._pos = 0

    def _close_part(self) -> None:
        if self._ahead is not None:
            self._ahead.close()
            self._ahead = None
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def saw_refetched_part(self) -> bool:
        """Did this stream read bytes of a part that was fetched again since (so they may be wrong)?"""
        with self.dl._cond:
            return any(self.dl.generation[i] != gen for i, gen in self.seen.items())

    def drain(self) -> None:
        """Read (and hash) whatever the consumer left unread: trailing bytes count too."""
        buf = bytearray(CHUNK)
        while self.readinto(memoryview(buf)):
            pass

    def close(self) -> None:
        self._close_part()
        super().close()


class ReadAhead:
    """The bytes [start, end) of an open, complete part, read ahead by ``depth`` threads in ``block``
    preads and handed out in order. A short read (the file shrank under us) is a StreamRestart."""

    def __init__(self, fd: int, start: int, end: int, block: int = READ_AHEAD_BLOCK,
                 depth: int = READ_AHEAD_DEPTH) -> None:
        self.fd, self.end, self.block = fd, end, block
        self.next_offset = start
        self.pool = ThreadPoolExecutor(depth, thread_name_prefix="read-ahead")
        self.pending: deque[tuple[Future, int]] = deque()
        self.buf = memoryview(b"")
        for _ in range(depth):
            self._schedule()

    def _schedule(self) -> None:
        if self.next_offset < self.end:
            n = min(self.block, self.end - self.next_offset)
            self.pending.append((self.pool.submit(os.pread, self.fd, n, self.next_offset), n))
            self.next_offset += n

    def readinto(self, view: memoryview) -> int:
        if not self.buf:
            if not self.pending:
                return 0
            future, want = self.pending.popleft()
            data = future.result()
            if len(data) != want:
                raise StreamRestart("a part shrank while being read")
            self._schedule()
            self.buf = memoryview(data)
        n = min(len(view), len(self.buf))
        view[:n] = self.buf[:n]
        self.buf = self.buf[n:]
        return n

    def close(self) -> None:
        for future, _ in self.pending:
            future.cancel()
        self.pool.shutdown(wait=True)  # no pread may outlive the file descriptor
        self.pending.clear()


def _open_either(f: PartFile) -> io.BufferedReader:
    # The part may be renamed from .partial to its final name at any moment: same inode either way.
    for _ in range(3):
        for path in (f.partial, f.final):
            with contextlib.suppress(FileNotFoundError):
                return open(path, "rb")
        time.sleep(0.01)
    raise StreamRestart(f"part {f.part.name} vanished while being read")
