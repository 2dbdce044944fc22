"""Archive: sorted, normalised tar -> zstd -> parts below 2 GiB, hashed while written.

Nothing uncompressed touches the disk and nothing is held whole in memory: the tar is streamed into the
zstd compressor, whose output is cut into parts as it comes, each part and the whole stream hashed on
the way. Same entries + same options + same libzstd = same bytes: names sorted, mtimes fixed
(SOURCE_DATE_EPOCH), owner 0/0 with empty names, modes 0755/0644, zstd threads pinned >= 1.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import tarfile
import time
import typing
from dataclasses import dataclass
from pathlib import Path

import zstandard

from artifact.manifest import Part

from .collect import Entry
from .errors import PackError

log = logging.getLogger(__name__)

_COPY = 1 << 20


@dataclass(frozen=True)
class ZstdSettings:
    level: int
    threads: int
    long: int  # window log; 0 = no long-distance matching

    def compressor(self) -> zstandard.ZstdCompressor:
        kwargs: dict[str, int] = {"threads": self.threads, "write_checksum": 1}
        if self.long:
            kwargs.update(enable_ldm=1, window_log=self.long)
        params = zstandard.ZstdCompressionParameters.from_level(self.level, **kwargs)
        return zstandard.ZstdCompressor(compression_params=params)


@dataclass(frozen=True)
class ArchiveResult:
    size: int
    sha256: str
    parts: tuple[Part, ...]
    unpacked_size: int  # bytes of regular files
    file_count: int  # tar members of every kind


class PartWriter(io.RawIOBase):
    """A write-only stream cut into ``<stem>.000``, ``.001``...; each renamed into place when full."""

    def __init__(self, out: Path, stem: str, part_size: int) -> None:
        super().__init__()
        self.out, self.stem, self.part_size = out, stem, part_size
        self.total = hashlib.sha256()
        self.size = 0
        self.parts: list[Part] = []
        self._fh: io.BufferedWriter | None = None
        self._hash = hashlib.sha256()
        self._written = 0

    def writable(self) -> bool:
        return True

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        view = memoryview(data).cast("B")
        n = len(view)
        self.total.update(view)
        self.size += n
        while view:
            if self._fh is None:
                self._open()
            assert self._fh is not None
            room = self.part_size - self._written
            chunk = view[:room]
            self._fh.write(chunk)
            self._hash.update(chunk)
            self._written += len(chunk)
            view = view[len(chunk) :]
            if self._written == self.part_size:
                self._finish_part()
        return n

    def _name(self, index: int) -> str:
        return f"{self.stem}.{index:03d}"

    def _open(self) -> None:
        name = self._name(len(self.parts))
        self._fh = open(self.out / f".{name}.tmp", "wb")  # closed in _finish_part
        self._hash = hashlib.sha256()
        self._written = 0

    def _finish_part(self) -> None:
        assert self._fh is not None
        name = self._name(len(self.parts))
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        self._fh = None
        os.replace(self.out / f".{name}.tmp", self.out / name)
        self.parts.append(Part(name, self._written, self._hash.hexdigest()))
        log.info("archive: wrote %s (%d bytes)", name, self._written)

    def finish(self) -> None:
        if self._fh is not None or not self.parts:
            if self._fh is None:
                self._open()
            self._finish_part()

    def abort(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
            (self.out / f".{self._name(len(self.parts))}.tmp").unlink(missing_ok=True)


def write_archive(
    entries: list[Entry], out: Path, stem: str, part_size: int, zstd: ZstdSettings, mtime: int
) -> ArchiveResult:
    """Stream ``entries`` as tar+zstd into parts ``<out>/<stem>.NNN``."""
    writer = PartWriter(out, stem, part_size)
    try:
        with zstd.compressor().stream_writer(writer, closefd=False, write_return_read=True) as zw:
            unpacked = write_tar(entries, zw, mtime)
        writer.finish()
    except BaseException:
        writer.abort()
        raise
    return ArchiveResult(writer.size, writer.total.hexdigest(), tuple(writer.parts), unpacked, len(entries))


def write_tar(entries: list[Entry], fileobj: typing.BinaryIO, mtime: int) -> int:
    """Write ``entries`` as one tar stream into ``fileobj``; returns the bytes of regular files."""
    unpacked = 0
    started = time.monotonic()
    # "w|": a pure stream; PAX for long names, written identically every time.
    with tarfile.open(fileobj=fileobj, mode="w|", format=tarfile.PAX_FORMAT, bufsize=_COPY) as tar:
        for i, entry in enumerate(entries, 1):
            unpacked += _add(tar, entry, mtime)
            if i % 5000 == 0:
                elapsed = max(time.monotonic() - started, 1e-6)
                log.info(
                    "archive: %d/%d members, %.0f MB read, %.1f MB/s",
                    i,
                    len(entries),
                    unpacked / 1e6,
                    unpacked / 1e6 / elapsed,
                )
    return unpacked


def _info(entry: Entry, mtime: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(entry.target)
    info.mtime = mtime
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    if entry.kind == "dir":
        info.type, info.mode = tarfile.DIRTYPE, 0o755
    elif entry.kind == "symlink":
        info.type, info.mode, info.linkname = tarfile.SYMTYPE, 0o777, entry.linkname
    else:
        info.type, info.mode = tarfile.REGTYPE, 0o755 if entry.executable else 0o644
    return info


def _add(tar: tarfile.TarFile, entry: Entry, mtime: int) -> int:
    info = _info(entry, mtime)
    if entry.kind != "file":
        tar.addfile(info)
        return 0
    data = entry.open_bytes()
    if data is not None:
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
        return info.size
    assert entry.source is not None
    try:
        with open(entry.source, "rb") as fh:
            info.size = os.fstat(fh.fileno()).st_size
            tar.addfile(info, fh)
    except OSError as exc:
        raise PackError(
            "archive",
            f"could not read {entry.source} for {entry.target}: {exc.strerror or exc}",
            "the env or its package cache changed while packing: pack again",
        ) from None
    return info.size
