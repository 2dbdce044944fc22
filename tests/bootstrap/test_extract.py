"""Hostile archives: each kind is refused, nothing lands outside the staging root, no marker appears."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
import zstandard

from worker.bootstrap.extract import ExtractError, Extractor

from .conftest import Server, build_tar, run_bootstrap, tiny_env_files, write_artifact


def _tar(*members: tuple[tarfile.TarInfo, bytes | None]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _m(name: str, kind: bytes = tarfile.REGTYPE, data: bytes | None = None, link: str = "",
       mode: int = 0o644) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type, info.mode = kind, mode
    if data is not None:
        info.size = len(data)
    info.linkname = link
    return info, data


def _extract(root: Path, tar_bytes: bytes) -> None:
    Extractor(root).run(io.BytesIO(zstandard.ZstdCompressor().compress(tar_bytes)))


HOSTILE: dict[str, Callable[[], bytes]] = {
    "dotdot": lambda: _tar(_m("../evil", data=b"x")),
    "dotdot-inside": lambda: _tar(_m("a/../../evil", data=b"x")),
    "absolute": lambda: _tar(_m("/tmp/evil-abs", data=b"x")),
    "symlink-out": lambda: _tar(_m("link", tarfile.SYMTYPE, link="../../outside")),
    "symlink-absolute": lambda: _tar(_m("link", tarfile.SYMTYPE, link="/etc")),
    "symlink-chain": lambda: _tar(_m("d", tarfile.DIRTYPE, mode=0o755),
                                  _m("d/up", tarfile.SYMTYPE, link=".."),
                                  _m("d/up2", tarfile.SYMTYPE, link="up/..")),
    "write-through-symlink": lambda: _tar(_m("sub", tarfile.DIRTYPE, mode=0o755),
                                          _m("alias", tarfile.SYMTYPE, link="sub"),
                                          _m("alias/file", data=b"x")),
    "hardlink-out": lambda: _tar(_m("h", tarfile.LNKTYPE, link="/etc/passwd")),
    "hardlink-dotdot": lambda: _tar(_m("h", tarfile.LNKTYPE, link="../outside/file")),
    "hardlink-to-symlink": lambda: _tar(_m("s", tarfile.SYMTYPE, link="x"),
                                        _m("h", tarfile.LNKTYPE, link="s")),
    "chardev": lambda: _tar(_m("dev", tarfile.CHRTYPE)),
    "blockdev": lambda: _tar(_m("dev", tarfile.BLKTYPE)),
    "fifo": lambda: _tar(_m("fifo", tarfile.FIFOTYPE)),
    "duplicate": lambda: _tar(_m("f", data=b"one"), _m("f", data=b"two")),
    "file-then-symlink": lambda: _tar(_m("f", data=b"one"), _m("f", tarfile.SYMTYPE, link="g")),
}


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_hostile_member_refused(tmp_path: Path, kind: str) -> None:
    root = tmp_path / "stage" / "env"
    try:
        tar_bytes = HOSTILE[kind]()
    except (ValueError, tarfile.TarError):
        pytest.skip("tarfile cannot even write this member")
    with pytest.raises(ExtractError) as info:
        _extract(root, tar_bytes)
    assert "extract:" in str(info.value)
    # nothing appeared next to the staging root (or anywhere above it)
    assert [p.name for p in tmp_path.iterdir()] == ["stage"]
    assert [p.name for p in (tmp_path / "stage").iterdir()] == ["env"]
    assert not (tmp_path / "evil").exists() and not Path("/tmp/evil-abs").exists()


def test_good_archive_extracts_with_modes_links_and_mtimes(tmp_path: Path) -> None:
    files = tiny_env_files(n_files=3)
    root = tmp_path / "env"
    _extract(root, build_tar(files))
    assert (root / "bin" / "python").stat().st_mode & 0o111
    assert (root / "lib" / "libdemo.so").resolve() == (root / "lib" / "libdemo.so.1").resolve()
    assert int((root / "lib/python3.11/site-packages/pkg/__init__.py").stat().st_mtime) == 1_700_000_000
    assert (root / "share" / "empty").is_dir()


def test_hardlink_inside_is_fine(tmp_path: Path) -> None:
    root = tmp_path / "env"
    _extract(root, _tar(_m("a", data=b"data"), _m("b", tarfile.LNKTYPE, link="a")))
    assert (root / "b").read_bytes() == b"data" and (root / "a").stat().st_nlink == 2


def test_not_zstd_and_not_tar(tmp_path: Path) -> None:
    with pytest.raises(ExtractError, match="zstd"):
        Extractor(tmp_path / "a").run(io.BytesIO(b"this is not zstd at all" * 10))
    with pytest.raises(ExtractError):
        Extractor(tmp_path / "b").run(io.BytesIO(zstandard.ZstdCompressor().compress(b"\x01" * 2048)))


def test_truncated_archive(tmp_path: Path) -> None:
    tar_bytes = build_tar(tiny_env_files(n_files=5, big=50_000))
    data = zstandard.ZstdCompressor().compress(tar_bytes)
    with pytest.raises(ExtractError):
        Extractor(tmp_path / "t").run(io.BytesIO(data[: len(data) // 2]))


def test_hostile_artifact_end_to_end(tmp_path: Path, server: Server) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    write_artifact(server.root, _tar(_m("ok", data=b"fine"),
                                     _m("link", tarfile.SYMTYPE, link="../../../outside"),
                                     _m("link/pwned", data=b"x")))
    vol = tmp_path / "vol"
    vol.mkdir()
    run = run_bootstrap("--manifest-url", server.manifest_url(), "--volume", str(vol), "--no-exec")
    assert run.code == 15, run.stderr
    assert run.result["status"] == "failed" and run.result["phase"] == "extract"
    assert "points outside" in run.result["error"]
    assert list(outside.iterdir()) == []
    assert not list((vol / "envs").glob("*.ready.json"))
    assert "extract: symlink" in run.stderr  # the one-line failure names phase and cause
