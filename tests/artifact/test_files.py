"""The contract's file primitives: streaming sha256 and writes that readers never see half done."""

from __future__ import annotations

import hashlib
import io
import os
import stat
from pathlib import Path

import pytest

from artifact import files


def test_sha256_streams_in_chunks_and_matches_hashlib(tmp_path: Path) -> None:
    data = os.urandom(files.HASH_CHUNK * 2 + 17)  # more than one chunk, not a multiple of it
    path = tmp_path / "blob"
    path.write_bytes(data)
    assert files.sha256_file(path) == hashlib.sha256(data).hexdigest()
    assert files.sha256_stream(io.BytesIO(data)) == hashlib.sha256(data).hexdigest()
    assert files.sha256_stream(io.BytesIO(b"")) == hashlib.sha256(b"").hexdigest()


def test_write_atomic_replaces_the_file_and_leaves_nothing_else(tmp_path: Path) -> None:
    target = tmp_path / "marker.json"
    target.write_text("old")
    files.write_atomic(target, b"new")
    files.write_atomic(target, "newer")  # text is written as UTF-8
    assert target.read_text() == "newer"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["marker.json"]
    # mkstemp makes 0600 files; what others read (manifests, markers on a shared volume) is 0644.
    assert stat.S_IMODE(target.stat().st_mode) == 0o644


def test_a_failed_write_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "marker.json"
    target.write_text("old")

    def no_space(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(OSError, match="No space"):
        files.write_atomic(target, b"new")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["marker.json"]  # the temp file is gone


def test_fsync_tree_flushes_every_file_and_skips_links(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "one").write_bytes(b"1")
    (tmp_path / "two").write_bytes(b"2")
    (tmp_path / "dangling").symlink_to(tmp_path / "missing")
    flushed: list[str] = []
    monkeypatch.setattr(files, "fsync_path", lambda path: flushed.append(os.path.basename(path)))
    files.fsync_tree(tmp_path)
    assert sorted(flushed) == ["one", "two"]


def test_fsync_dir_tolerates_a_filesystem_that_refuses(tmp_path: Path) -> None:
    files.fsync_dir(tmp_path)
    files.fsync_dir(tmp_path / "missing")  # best effort: never raises
