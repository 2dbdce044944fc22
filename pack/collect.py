"""Collect: the env's files and relocation data from conda-pack (used as a library), as sorted tar entries.

conda-pack decides what goes in (managed files come from the package cache with their prefix
placeholders intact, pip files from the prefix), which text files get their prefix or shebang
rewritten, what ``bin/conda-unpack`` must patch at install time, and with ``dest_prefix`` rewrites
prefixes itself. It hands each file to an "archive" object; ours only records the entries so that
``archive.py`` can write them sorted and normalised. Rewritten contents larger than a small limit are
not kept: they are produced again, one file at a time, when the tar is written.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from conda_pack.core import CondaEnv, CondaPackException, File, Packer, is_binary_file

from .errors import PackError

log = logging.getLogger(__name__)

_KEEP_IN_MEMORY = 4 << 20


@dataclass
class Entry:
    """One tar member: a directory, a symlink, or a regular file with its content source."""

    target: str
    kind: str  # "dir" | "symlink" | "file"
    executable: bool = False
    linkname: str = ""
    source: str | None = None  # regular file read from disk as-is
    data: bytes | None = None  # rewritten or generated content kept in memory
    regenerate: Callable[[], bytes] | None = None  # rewritten content produced again on demand

    def open_bytes(self) -> bytes | None:
        if self.data is not None:
            return self.data
        if self.regenerate is not None:
            return self.regenerate()
        return None


@dataclass(frozen=True)
class Collected:
    entries: list[Entry]  # sorted by target, parents included
    max_placeholder: int | None  # shortest binary placeholder: the longest prefix conda-unpack can write


def load_env(prefix: Path) -> CondaEnv:
    """conda-pack's view of the env, refusing what cannot be packed reliably."""
    try:
        return CondaEnv.from_prefix(str(prefix), on_missing_cache="raise")
    except CondaPackException as exc:
        msg = " ".join(str(exc).split())
        if "without entries in the package cache" in msg:
            raise PackError(
                "collect",
                "the package cache the env was created from is missing "
                f"({msg.split('packages:')[-1].strip()})",
                "keep the pkgs cache (it holds the prefix placeholders) or recreate the env (`pack build`)",
            ) from None
        if "editable packages" in msg:
            raise PackError(
                "collect",
                f"the env has editable installs: {msg.split('found:')[-1].strip()}",
                "install those packages as wheels (no `pip install -e`) before packing",
            ) from None
        raise PackError(
            "collect", f"conda-pack refused {prefix}: {msg}", "fix the env, then pack again"
        ) from None


class _Recorder:
    """Stands in for conda-pack's archive writer: records entries instead of writing them."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.entries: dict[str, Entry] = {}
        self.current: File | None = None
        self.dest_prefix: str | None = None

    def add(self, source: str, target: str) -> None:
        st = os.lstat(source)
        if stat.S_ISLNK(st.st_mode):
            entry = Entry(target, "symlink", linkname=_relative_link(self.prefix, source, target))
        elif stat.S_ISDIR(st.st_mode):
            entry = Entry(target, "dir")
        elif self.current is None:
            # A file conda-pack generated (conda-unpack, activate...): temporary, read it now.
            with open(source, "rb") as fh:
                entry = Entry(target, "file", _is_exec(st.st_mode), data=fh.read())
        else:
            entry = Entry(target, "file", _is_exec(st.st_mode), source=source)
        self._put(entry)

    def add_bytes(self, source: str, data: bytes, target: str) -> None:
        st = os.stat(source)
        entry = Entry(target, "file", _is_exec(st.st_mode))
        if self.current is not None and self.current.file_mode == "unknown" and is_binary_file(data):
            # An unmanaged binary (pip's .so files): conda-pack read it to classify it and left it as is.
            entry.source = source
        elif self.current is not None and len(data) == st.st_size and _unchanged(source, data):
            # Most unmanaged text files (pip's .py files) pass through unchanged: stream them from disk
            # instead of holding every one of them in memory until the tar is written.
            entry.source = source
        elif len(data) <= _KEEP_IN_MEMORY or self.current is None:
            entry.data = data
        else:
            entry.regenerate = _regenerator(self.prefix, self.dest_prefix, self.current, target)
        self._put(entry)

    def _put(self, entry: Entry) -> None:
        if entry.target in self.entries:
            log.warning("collect: %s is provided twice; keeping the first", entry.target)
            return
        self.entries[entry.target] = entry


def _unchanged(source: str, data: bytes) -> bool:
    with open(source, "rb") as fh:
        return fh.read() == data


def _regenerator(prefix: str, dest_prefix: str | None, file: File, target: str) -> Callable[[], bytes]:
    def again() -> bytes:
        capture = _Capture()
        Packer(prefix, capture, dest_prefix).add(file)
        if capture.data is None:
            raise PackError(
                "collect", f"conda-pack did not rewrite {target} the second time", "report this bug"
            )
        return capture.data

    return again


class _Capture:
    def __init__(self) -> None:
        self.data: bytes | None = None

    def add(self, source: str, target: str) -> None:  # not reached for a rewritten file
        pass

    def add_bytes(self, source: str, data: bytes, target: str) -> None:
        self.data = data


def collect(env: CondaEnv, dest_prefix: str | None) -> Collected:
    limit = shortest_binary_placeholder(env)
    if dest_prefix is not None and limit is not None and len(dest_prefix) > limit:
        raise PackError(
            "collect",
            f"--dest-prefix is {len(dest_prefix)} characters but binaries in the env can only "
            f"take a prefix of up to {limit} (their placeholder's length)",
            "choose a shorter destination path",
        )
    recorder = _Recorder(env.prefix)
    recorder.dest_prefix = dest_prefix
    packer = Packer(env.prefix, recorder, dest_prefix)
    for file in env.files:
        recorder.current = file
        packer.add(file)
    recorder.current = None
    packer.finish()
    entries = _with_parents(recorder.entries)
    return Collected(entries, limit)


def shortest_binary_placeholder(env: CondaEnv) -> int | None:
    """The longest install prefix every binary file in the env can be patched with."""
    binary = [
        len(f.prefix_placeholder) for f in env.files if f.file_mode == "binary" and f.prefix_placeholder
    ]
    return min(binary) if binary else None


def _with_parents(entries: dict[str, Entry]) -> list[Entry]:
    for target in list(entries):
        parent = os.path.dirname(target)
        while parent and parent not in entries:
            entries[parent] = Entry(parent, "dir")
            parent = os.path.dirname(parent)
    return [entries[k] for k in sorted(entries)]


def _is_exec(mode: int) -> bool:
    return bool(mode & 0o111)


def _relative_link(prefix: str, source: str, target: str) -> str:
    """The symlink's target, relative and inside the env; refuse links that leave it."""
    link = os.readlink(source)
    if os.path.isabs(link):
        if link != prefix and not link.startswith(prefix + os.sep):
            raise PackError(
                "collect",
                f"symlink {target} points outside the env ({link})",
                "replace it with a copy or a link inside the env",
            )
        link = os.path.relpath(link, os.path.dirname(os.path.join(prefix, target)))
    resolved = os.path.normpath(os.path.join(os.path.dirname(target), link))
    if resolved == ".." or resolved.startswith("../") or os.path.isabs(resolved):
        raise PackError(
            "collect",
            f"symlink {target} -> {link} leaves the env",
            "replace it with a copy or a link inside the env",
        )
    return link


