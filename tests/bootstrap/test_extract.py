"""Hostile archives: each kind is refused, nothing lands outside the staging root, no marker appears."""

from __future__ import annotations

import io
import stat
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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


names = st.lists(st.integers(1, 600), min_size=1, max_size=24).map(
    lambda lengths: "/".join(f"{i % 10}" * n for i, n in enumerate(lengths)))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=names)
def test_a_name_of_any_length_extracts_or_is_refused_briefly_as_the_artifacts_fault(tmp_path: Path,
                                                                                   name: str) -> None:
    root = tmp_path / f"env-{len(name)}-{name.count('/')}-{abs(hash(name)) % 10**6}"
    fits = max(len(p) for p in name.split("/")) <= 255 and len(str(root)) + 1 + len(name) < 4096
    try:
        _extract(root, _tar(_m(name, data=b"x")))
    except ExtractError as err:
        assert not fits, err
        assert len(str(err)) < 500 and "just pack" in err.remedy  # the artifact, not the volume
        assert "bytes" in err.message and "filesystem takes" in err.message
        return
    assert fits and (root / name).read_bytes() == b"x"


def test_a_10kb_name_gives_a_short_message(tmp_path: Path) -> None:
    with pytest.raises(ExtractError) as caught:
        _extract(tmp_path / "env", _tar(_m("a" * 10_000, data=b"x")))
    assert len(str(caught.value)) < 400 and "10000 characters" in str(caught.value)


def test_sticky_bit_kept_on_directories_setuid_never(tmp_path: Path) -> None:
    root = tmp_path / "env"
    _extract(root, _tar(_m("tmp", tarfile.DIRTYPE, mode=0o1777), _m("plain", tarfile.DIRTYPE, mode=0o755),
                        _m("bin/su", data=b"#!/bin/sh\n", mode=0o4755),
                        _m("bin/sg", data=b"x", mode=0o2755)))
    assert stat.S_IMODE((root / "tmp").stat().st_mode) == 0o1777
    assert stat.S_IMODE((root / "plain").stat().st_mode) == 0o755
    assert stat.S_IMODE((root / "bin/su").stat().st_mode) == 0o755
    assert stat.S_IMODE((root / "bin/sg").stat().st_mode) == 0o755


def test_more_bytes_than_the_manifest_declares_is_refused(tmp_path: Path) -> None:
    tar_bytes = _tar(_m("a", data=b"x" * 600), _m("b", data=b"y" * 600))
    with pytest.raises(ExtractError, match=r"more than the 1000 bytes of files its manifest declares"):
        Extractor(tmp_path / "env", max_bytes=1000).run(io.BytesIO(zstandard.ZstdCompressor().compress(
            tar_bytes)))
    Extractor(tmp_path / "ok", max_bytes=1200).run(io.BytesIO(zstandard.ZstdCompressor().compress(tar_bytes)))


def test_long_name_end_to_end_is_phase_extract(tmp_path: Path, server: Server) -> None:
    write_artifact(server.root, _tar(_m("ok", data=b"fine"), _m("d/" + "n" * 10_000, data=b"x")))
    vol = tmp_path / "vol"
    vol.mkdir()
    run = run_bootstrap("--manifest-url", server.manifest_url(), "--volume", str(vol), "--no-exec")
    assert run.code == 15 and run.result["phase"] == "extract", run.stderr
    assert len(run.stdout) < 1500 and "just pack" in run.result["remedy"]
