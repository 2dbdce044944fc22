"""zstd -> tar stream -> files under one root, refusing anything that could write or point outside it.

Refused: absolute names, ``..``, names through a symlink the archive made, symlinks whose target
leaves the tree (checked lexically per member, then with ``realpath`` over the whole tree at the end,
which catches chains), hardlinks to anything but a regular file already extracted, device files,
fifos and any other special member, and a path given twice. Files are created with ``O_EXCL |
O_NOFOLLOW`` in a root that starts empty, so nothing outside it is ever opened for writing.

Decompression runs in its own thread (zstandard releases the GIL) and hands chunks to the tar reader
through a small queue, so decompression overlaps file writes.
"""

from __future__ import annotations

import errno
import logging
import os
import posixpath
import queue
import tarfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from .errors import BootstrapError

log = logging.getLogger("extract")

_CHUNK = 1 << 20
_QUEUE_DEPTH = 16
_FILE_TYPES = (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE)


class ExtractError(BootstrapError):
    def __init__(self, message: str, remedy: str = "the artifact is damaged or hostile: do not use it; "
                                                   "rebuild it with `just pack`") -> None:
        super().__init__("extract", message, remedy)


@dataclass
class ExtractStats:
    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    hardlinks: int = 0
    bytes: int = 0


class _Pipe:
    """A file-like reader over chunks produced by another thread (the decompressor)."""

    def __init__(self, source: BinaryIO) -> None:
        self._q: queue.Queue[bytes | BaseException | None] = queue.Queue(_QUEUE_DEPTH)
        self._buf = memoryview(b"")
        self._eof = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._fill, args=(source,), name="decompress", daemon=True)
        self._thread.start()

    def _fill(self, source: BinaryIO) -> None:
        try:
            import zstandard  # a small wheel, imported only on a cold install

            reader = zstandard.ZstdDecompressor(max_window_size=1 << 31).stream_reader(
                source, read_size=_CHUNK, read_across_frames=True)
            try:
                while not self._stop.is_set():
                    chunk = reader.read(4 * _CHUNK)
                    if not chunk:
                        break
                    self._put(chunk)
            except zstandard.ZstdError as exc:
                raise ExtractError(f"the archive is not a valid zstd stream: {exc}") from None
            self._put(None)
        except BaseException as exc:  # re-raised in the reading thread
            self._put(exc)

    def _put(self, item: bytes | BaseException | None) -> None:
        while not self._stop.is_set():
            try:
                self._q.put(item, timeout=0.5)
                return
            except queue.Full:
                continue

    def read(self, n: int = -1) -> bytes:
        out = bytearray()
        while n < 0 or len(out) < n:
            if not self._buf:
                if self._eof:
                    break
                item = self._q.get()
                if item is None:
                    self._eof = True
                    break
                if isinstance(item, BaseException):
                    self._eof = True
                    raise item
                self._buf = memoryview(item)
            take = len(self._buf) if n < 0 else min(n - len(out), len(self._buf))
            out += self._buf[:take]
            self._buf = self._buf[take:]
        return bytes(out)

    def finish(self) -> None:
        """Read the decompressed rest (the tar padding) so the source is consumed to its end."""
        while self.read(4 * _CHUNK):
            pass

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def _write_error(name: str, exc: OSError) -> BootstrapError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return BootstrapError("extract", f"no space left on the volume while writing {name!r}",
                              "grow the network volume or remove old envs (see `python -m worker.bootstrap "
                              "doctor`); the next start resumes")
    if isinstance(exc, FileExistsError):
        return ExtractError(f"member {name!r} appears twice in the archive")
    return BootstrapError("extract", f"could not write {name!r}: {exc.strerror or exc}",
                          "check the volume (mounted read-write? healthy?)")


def _clean_name(name: str) -> str:
    if "\x00" in name:
        raise ExtractError(f"member name {name!r} holds a NUL byte")
    if name.startswith("/") or posixpath.isabs(name):
        raise ExtractError(f"member {name!r} has an absolute path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ExtractError(f"member {name!r} climbs out with '..'")
    return "/".join(parts)


class Extractor:
    """Extracts one archive stream into ``root`` (which must not exist yet, or be empty)."""

    def __init__(self, root: Path, check: Callable[[], None] = lambda: None,
                 keep: frozenset[str] | set[str] = frozenset()) -> None:
        self.root = root
        self.check = check
        self.keep = keep  # files the installer put in the root beforehand (its install stamp)
        self.stats = ExtractStats()
        self._symlinks: set[str] = set()
        self._files: set[str] = set()
        self._dirs: set[str] = {""}

    def run(self, compressed: BinaryIO) -> ExtractStats:
        self.root.mkdir(parents=True, exist_ok=True)
        if any(p.name not in self.keep for p in self.root.iterdir()):
            raise ExtractError(f"staging directory {self.root} is not empty", "remove it and start again")
        pipe = _Pipe(compressed)
        try:
            try:
                tar = tarfile.open(fileobj=pipe, mode="r|", bufsize=_CHUNK)  # type: ignore[call-overload]
            except tarfile.TarError as exc:
                raise ExtractError(f"the archive is not a tar stream: {exc}") from None
            try:
                for member in tar:
                    self.check()
                    try:
                        self._member(tar, member)
                    except OSError as exc:
                        raise _write_error(member.name, exc) from None
            except tarfile.TarError as exc:
                raise ExtractError(f"the tar stream is damaged: {exc}") from None
            pipe.finish()
        finally:
            pipe.close()
        self._check_links()
        return self.stats

    def _member(self, tar: tarfile.TarFile, m: tarfile.TarInfo) -> None:
        rel = _clean_name(m.name)
        if rel in self.keep:
            raise ExtractError(f"member {rel!r} collides with the installer's own stamp file")
        if not rel:
            if not m.isdir():
                raise ExtractError(f"member {m.name!r} names the root but is not a directory")
            return
        parent, _, _ = rel.rpartition("/")
        self._ensure_dir(parent, rel)
        if rel in self._files or rel in self._symlinks or (rel in self._dirs and not m.isdir()):
            raise ExtractError(f"member {rel!r} appears twice in the archive")
        target = self.root / rel
        if m.type in _FILE_TYPES:
            self._write_file(tar, m, rel, target)
        elif m.isdir():
            if rel not in self._dirs:
                os.mkdir(target, 0o700)
                self._dirs.add(rel)
                self.stats.dirs += 1
            os.chmod(target, (m.mode & 0o777) | 0o700)
        elif m.issym():
            self._symlink(m, rel, target)
        elif m.islnk():
            self._hardlink(m, rel, target)
        else:
            raise ExtractError(f"member {rel!r} is a device file, fifo or other special file "
                               f"(tar type {m.type!r}); an environment never needs one")

    def _ensure_dir(self, rel_dir: str, member: str) -> None:
        if rel_dir in self._dirs:
            return
        # Every prefix must be a directory this extraction made: never a symlink, never a file.
        built = ""
        for piece in rel_dir.split("/"):
            built = f"{built}/{piece}" if built else piece
            if built in self._symlinks:
                raise ExtractError(f"member {member!r} goes through the symlink {built!r}")
            if built in self._files:
                raise ExtractError(f"member {member!r} goes through the file {built!r}")
            if built not in self._dirs:
                os.mkdir(self.root / built, 0o755)
                self._dirs.add(built)
                self.stats.dirs += 1

    def _write_file(self, tar: tarfile.TarFile, m: tarfile.TarInfo, rel: str, target: Path) -> None:
        src = tar.extractfile(m)
        assert src is not None
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            remaining = m.size
            while remaining > 0:
                chunk = src.read(min(_CHUNK, remaining))
                if not chunk:
                    raise ExtractError(f"the archive ends inside {rel!r}")
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view):]
                remaining -= len(chunk)
            os.fchmod(fd, (m.mode & 0o777) | 0o600)
            # Keep mtimes: Python checks .pyc files against their source's mtime.
            os.utime(fd, ns=(int(m.mtime * 1e9), int(m.mtime * 1e9)))
        finally:
            os.close(fd)
        self._files.add(rel)
        self.stats.files += 1
        self.stats.bytes += m.size

    def _symlink(self, m: tarfile.TarInfo, rel: str, target: Path) -> None:
        link = m.linkname
        if not link or "\x00" in link or link.startswith("/"):
            raise ExtractError(f"symlink {rel!r} -> {link!r} points outside the environment (absolute)")
        resolved = posixpath.normpath(posixpath.join(posixpath.dirname(rel), link))
        if resolved == ".." or resolved.startswith("../"):
            raise ExtractError(f"symlink {rel!r} -> {link!r} points outside the environment")
        os.symlink(link, target)
        self._symlinks.add(rel)
        self.stats.symlinks += 1

    def _hardlink(self, m: tarfile.TarInfo, rel: str, target: Path) -> None:
        source = _clean_name(m.linkname)
        if source not in self._files:
            raise ExtractError(f"hardlink {rel!r} -> {m.linkname!r} does not point to a regular file "
                               "extracted earlier from this archive")
        os.link(self.root / source, target, follow_symlinks=False)
        self._files.add(rel)
        self.stats.hardlinks += 1

    def _check_links(self) -> None:
        # Lexical checks cannot see chains (a -> b/.. where b is itself a link); the real tree can.
        root = os.path.realpath(self.root)
        for rel in sorted(self._symlinks):
            real = os.path.realpath(self.root / rel)
            if real != root and not real.startswith(root + os.sep):
                raise ExtractError(f"symlink {rel!r} resolves to {real}, outside the environment")
