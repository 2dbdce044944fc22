"""zstd -> tar stream -> files under one root, refusing anything that could write or point outside it.

Refused: absolute names, ``..``, names through a symlink the archive made, symlinks whose target
leaves the tree (checked lexically per member, then with ``realpath`` over the whole tree at the end,
which catches chains), hardlinks to anything but a regular file already extracted, device files,
fifos and any other special member, and a path given twice. Files are created with ``O_EXCL |
O_NOFOLLOW`` in a root that starts empty, so nothing outside it is ever opened for writing.

Member names and link targets are the archive's text: every message quotes them bounded
(``_q``), and names longer than the filesystem takes (a component over NAME_MAX, a path over
PATH_MAX) are refused by name before any ``open``, as a damaged artifact, not as a volume fault. The
regular files may add up to the manifest's ``unpacked_size`` at most (what preflight reserved): an
archive holding more is refused as inconsistent, so a lying size cannot fill the volume start after
start. Modes: permission bits kept (owner read/write forced), the sticky bit kept on directories (a
world-writable directory without it lets anyone delete anyone's files), setuid/setgid never.

Decompression runs in its own thread (zstandard releases the GIL) and hands chunks to the tar reader
through a small queue, so decompression overlaps file writes.
"""

from __future__ import annotations

import errno
import io
import logging
import os
import posixpath
import queue
import sys
import tarfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from .errors import BootstrapError
from .writers import CREATE, Writers, set_meta, write_all, write_small

log = logging.getLogger("extract")

_CHUNK = 1 << 20
_SMALL_FILE = 4 << 20  # handed to the writer threads whole; larger files are streamed in place
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


class _Forward:
    """Seekable-forward-only file over the pipe: lets tarfile read in plain "r:" mode, whose reads go
    straight through (its stream mode re-copies its whole buffer on every 512-byte header read)."""

    def __init__(self, pipe: _Pipe) -> None:
        self.pipe = pipe
        self.pos = 0

    def read(self, n: int = -1) -> bytes:
        data = self.pipe.read(n)
        self.pos += len(data)
        return data

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = 0) -> int:
        if whence == 1:
            offset += self.pos
        elif whence != 0 or offset < self.pos:
            raise io.UnsupportedOperation("the archive stream only moves forward")
        while self.pos < offset:
            if not self.read(min(_CHUNK, offset - self.pos)):
                break
        return self.pos


def _q(text: str, keep: int = 80) -> str:
    """An archive's name or link target, quoted for a message: never more than ~100 characters."""
    if len(text) <= keep:
        return repr(text)
    return f"{text[:keep - 20]!r}...{text[-16:]!r} ({len(text)} characters)"


def _write_error(name: str, exc: OSError) -> BootstrapError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return BootstrapError("extract", f"no space left on the volume while writing {_q(name)}",
                              "grow the network volume or remove old envs (see `python -m worker.bootstrap "
                              "doctor`); after that the next start resumes from the parts already on the "
                              "volume")
    if exc.errno == errno.ENAMETOOLONG:
        return ExtractError(f"member {_q(name)}: the name is longer than the volume's filesystem takes")
    if isinstance(exc, FileExistsError):
        return ExtractError(f"member {_q(name)} appears twice in the archive")
    return BootstrapError("extract", f"could not write {_q(name)}: {exc.strerror or exc}",
                          "check the volume (mounted read-write? healthy?)")


def _pathconf(path: Path, name: str, default: int) -> int:
    try:
        value = os.pathconf(path, name)
    except (OSError, ValueError):
        return default
    return value if value > 0 else default


def _clean_name(name: str) -> str:
    if "\x00" in name:
        raise ExtractError(f"member name {_q(name)} holds a NUL byte")
    if name.startswith("/") or posixpath.isabs(name):
        raise ExtractError(f"member {_q(name)} has an absolute path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ExtractError(f"member {_q(name)} climbs out with '..'")
    return "/".join(parts)


class Extractor:
    """Extracts one archive stream into ``root`` (which must not exist yet, or be empty)."""

    def __init__(self, root: Path, check: Callable[[], None] = lambda: None,
                 keep: frozenset[str] | set[str] = frozenset(), max_bytes: int | None = None) -> None:
        self.root = root
        self.check = check
        self.keep = keep  # files the installer put in the root beforehand (its install stamp)
        self.max_bytes = max_bytes  # the manifest's unpacked_size: regular files may not add up to more
        self.stats = ExtractStats()
        self._symlinks: set[str] = set()
        self._files: set[str] = set()
        self._dirs: set[str] = {""}
        self._prefix = str(root) + os.sep
        self._fwd: _Forward | None = None
        self._hardlinks: list[tuple[str, str]] = []
        self._writers = Writers(on_error=_write_error)

    def run(self, compressed: BinaryIO) -> ExtractStats:
        self.root.mkdir(parents=True, exist_ok=True)
        if any(p.name not in self.keep for p in self.root.iterdir()):
            raise ExtractError(f"staging directory {self.root} is not empty", "remove it and start again")
        self._name_max = _pathconf(self.root, "PC_NAME_MAX", 255)
        # PATH_MAX counts the terminating NUL; the root's own path comes first.
        self._rel_max = _pathconf(self.root, "PC_PATH_MAX", 4096) - 1 - len(os.fsencode(self._prefix))
        pipe = _Pipe(compressed)
        # The parsing thread is CPU-bound; writer threads come back from each syscall wanting the GIL.
        # With the default 5 ms switch interval they queue behind it (a convoy); 0.2 ms keeps them fed.
        switch = sys.getswitchinterval()
        sys.setswitchinterval(min(switch, 0.0002))
        try:
            try:
                self._fwd = _Forward(pipe)
                tar = tarfile.open(fileobj=self._fwd, mode="r:")  # type: ignore[arg-type]
            except tarfile.TarError as exc:
                raise ExtractError(f"the archive is not a tar stream: {exc}") from None
            try:
                for member in tar:
                    self.check()
                    try:
                        self._member(tar, member)
                    except OSError as exc:
                        raise _write_error(member.name, exc) from None
                    tar.members.clear()  # nothing looks back: keep memory flat over 100k members
                self._writers.drain()
                for rel, source in self._hardlinks:  # their sources are all written now
                    try:
                        os.link(self.root / source, self.root / rel, follow_symlinks=False)
                    except OSError as exc:
                        raise _write_error(rel, exc) from None
            except tarfile.TarError as exc:
                raise ExtractError(f"the tar stream is damaged: {exc}") from None
            pipe.finish()
        finally:
            self._writers.close()
            pipe.close()
            sys.setswitchinterval(switch)
        self._check_links()
        return self.stats

    def _member(self, tar: tarfile.TarFile, m: tarfile.TarInfo) -> None:
        rel = _clean_name(m.name)
        self._check_length(rel)
        if rel in self.keep:
            raise ExtractError(f"member {_q(rel)} collides with the installer's own stamp file")
        if not rel:
            if not m.isdir():
                raise ExtractError(f"member {_q(m.name)} names the root but is not a directory")
            return
        parent, _, _ = rel.rpartition("/")
        self._ensure_dir(parent, rel)
        if rel in self._files or rel in self._symlinks or (rel in self._dirs and not m.isdir()):
            raise ExtractError(f"member {_q(rel)} appears twice in the archive")
        target = self._prefix + rel  # plain strings: pathlib costs more than the syscall here
        if m.type in _FILE_TYPES:
            self._write_file(tar, m, rel, target)
        elif m.isdir():
            if rel not in self._dirs:
                os.mkdir(target, 0o700)
                self._dirs.add(rel)
                self.stats.dirs += 1
            os.chmod(target, (m.mode & 0o1777) | 0o700)  # sticky kept, setuid/setgid never
        elif m.issym():
            self._symlink(m, rel, target)
        elif m.islnk():
            self._hardlink(m, rel, target)
        else:
            raise ExtractError(f"member {_q(rel)} is a device file, fifo or other special file "
                               f"(tar type {m.type!r}); an environment never needs one")

    def _check_length(self, rel: str) -> None:
        encoded = os.fsencode(rel)
        longest = max((len(piece) for piece in encoded.split(b"/")), default=0)
        if longest > self._name_max:
            raise ExtractError(f"member {_q(rel)} has a path component of {longest} bytes; the volume's "
                               f"filesystem takes {self._name_max} at most")
        if len(encoded) > self._rel_max:
            raise ExtractError(f"member {_q(rel)} is {len(encoded)} bytes long: under {self.root} the "
                               f"filesystem takes {self._rel_max} at most",
                               "the artifact is damaged or hostile, or the volume path is very deep: "
                               "rebuild it with `just pack`")

    def _ensure_dir(self, rel_dir: str, member: str) -> None:
        if rel_dir in self._dirs:
            return
        # Every prefix must be a directory this extraction made: never a symlink, never a file.
        built = ""
        for piece in rel_dir.split("/"):
            built = f"{built}/{piece}" if built else piece
            if built in self._symlinks:
                raise ExtractError(f"member {_q(member)} goes through the symlink {_q(built)}")
            if built in self._files:
                raise ExtractError(f"member {_q(member)} goes through the file {_q(built)}")
            if built not in self._dirs:
                os.mkdir(self._prefix + built, 0o755)
                self._dirs.add(built)
                self.stats.dirs += 1

    def _write_file(self, tar: tarfile.TarFile, m: tarfile.TarInfo, rel: str, target: str) -> None:
        if self.max_bytes is not None and self.stats.bytes + m.size > self.max_bytes:
            raise ExtractError(
                f"the archive holds more than the {self.max_bytes} bytes of files its manifest declares "
                f"(unpacked_size; {self.stats.bytes} extracted, then {_q(rel)} of {m.size} bytes)",
                "the manifest does not match its archive (preflight reserves space by its unpacked_size): "
                "re-publish the release with `just pack`")
        mode = (m.mode & 0o777) | 0o600
        # Python checks .pyc files against their source's mtime: keep those; other mtimes do not matter
        # and cost a syscall per file.
        mtime_ns = int(m.mtime * 1e9) if rel.endswith(".py") else None
        # The stream sits at the member's data: read it in place (tarfile then skips the padding);
        # an extractfile() object per member costs more than the read itself.
        fwd = self._fwd
        src: Any = fwd if fwd is not None and fwd.pos == m.offset_data else tar.extractfile(m)
        assert src is not None
        if m.size <= _SMALL_FILE:
            data = src.read(m.size)
            if len(data) != m.size:
                raise ExtractError(f"the archive ends inside {_q(rel)}")
            self._writers.submit(rel, m.size, write_small, target, data, mode, mtime_ns)
        else:
            self._write_large(src, m.size, rel, target, mode, mtime_ns)
        self._files.add(rel)
        self.stats.files += 1
        self.stats.bytes += m.size

    def _write_large(self, src: BinaryIO, size: int, rel: str, target: str, mode: int,
                     mtime_ns: int | None) -> None:
        fd = os.open(target, CREATE, mode)
        try:
            remaining = size
            while remaining > 0:
                chunk = src.read(min(_CHUNK, remaining))
                if not chunk:
                    raise ExtractError(f"the archive ends inside {_q(rel)}")
                write_all(fd, chunk)
                remaining -= len(chunk)
            set_meta(fd, mode, mtime_ns)
        finally:
            os.close(fd)


    def _symlink(self, m: tarfile.TarInfo, rel: str, target: str) -> None:
        link = m.linkname
        if not link or "\x00" in link or link.startswith("/"):
            raise ExtractError(f"symlink {_q(rel)} -> {_q(link)} points outside the environment (absolute)")
        resolved = posixpath.normpath(posixpath.join(posixpath.dirname(rel), link))
        if resolved == ".." or resolved.startswith("../"):
            raise ExtractError(f"symlink {_q(rel)} -> {_q(link)} points outside the environment")
        os.symlink(link, target)
        self._symlinks.add(rel)
        self.stats.symlinks += 1

    def _hardlink(self, m: tarfile.TarInfo, rel: str, target: str) -> None:
        source = _clean_name(m.linkname)
        if source not in self._files:
            raise ExtractError(f"hardlink {_q(rel)} -> {_q(m.linkname)} does not point to a regular file "
                               "extracted earlier from this archive")
        self._hardlinks.append((rel, source))
        self._files.add(rel)
        self.stats.hardlinks += 1

    def _check_links(self) -> None:
        # Lexical checks cannot see chains (a -> b/.. where b is itself a link); the real tree can.
        root = os.path.realpath(self.root)
        for rel in sorted(self._symlinks):
            real = os.path.realpath(self.root / rel)
            if real != root and not real.startswith(root + os.sep):
                raise ExtractError(f"symlink {_q(rel)} resolves to {real}, outside the environment")
