"""The artifact: parts verify, the tar is normalised, two packs are identical, relocation works."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import zstandard
from packtest_helpers import PART_SIZE, Packed, options_for

from artifact.files import sha256_file
from artifact.manifest import GITHUB_ASSET_LIMIT, read_manifest
from pack.build import DEFAULT_SOURCE_DATE_EPOCH, build


def _stream(out: Path, manifest) -> bytes:
    return b"".join((out / p.name).read_bytes() for p in manifest.parts)


def _members(data: bytes) -> list[tarfile.TarInfo]:
    reader = zstandard.ZstdDecompressor().stream_reader(data)
    with tarfile.open(fileobj=reader, mode="r|") as tar:
        return list(tar)


def _extract(out: Path, manifest, dest: Path) -> None:
    dest.mkdir(parents=True)
    reader = zstandard.ZstdDecompressor().stream_reader(_stream(out, manifest))
    with tarfile.open(fileobj=reader, mode="r|") as tar:
        tar.extractall(dest, filter="tar")


def test_parts_verify(packed: Packed) -> None:
    out, manifest = packed.options.out, read_manifest(packed.result.manifest_path)
    assert len(manifest.parts) > 2
    for part in manifest.parts:
        path = out / part.name
        assert path.stat().st_size == part.size <= PART_SIZE < GITHUB_ASSET_LIMIT
        assert sha256_file(path) == part.sha256
    data = _stream(out, manifest)
    assert len(data) == manifest.archive.size
    assert hashlib.sha256(data).hexdigest() == manifest.archive.sha256
    # The frame carries a content checksum: a flipped byte must not decode silently.
    params = zstandard.get_frame_parameters(data)
    assert params.has_checksum
    names = [m.name for m in _members(data)]
    assert names == sorted(names)
    assert manifest.file_count == len(names)
    assert manifest.name == "example" and manifest.platform == "linux-64" and manifest.relocatable


def test_tar_is_normalised(packed: Packed) -> None:
    manifest = read_manifest(packed.result.manifest_path)
    members = _members(_stream(packed.options.out, manifest))
    names = {m.name for m in members}
    for m in members:
        assert not m.name.startswith(("/", "./")) and ".." not in m.name.split("/")
        assert (m.uid, m.gid, m.uname, m.gname) == (0, 0, "", "")
        assert m.mtime == DEFAULT_SOURCE_DATE_EPOCH
        parent = os.path.dirname(m.name)
        assert not parent or parent in names, f"{m.name} has no directory entry for {parent}"
        if m.isdir():
            assert m.mode == 0o755
        elif m.issym():
            target = os.path.normpath(os.path.join(os.path.dirname(m.name), m.linkname))
            assert not os.path.isabs(m.linkname) and not target.startswith("..")
        else:
            assert m.isfile() and m.mode in (0o755, 0o644)
    for expected in (
        "bin/conda-unpack",
        "bin/python3.11",
        "bin/hello-prefix",
        "bin/tinycmd",
        "lib/python3.11/site-packages/tinypkg/__init__.py",
        "lib/python3.11/site-packages/hello_noarch/cli.py",
    ):
        assert expected in names
    assert sum(m.size for m in members if m.isfile()) == manifest.unpacked_size


def test_two_packs_are_byte_identical(packed: Packed, tmp_path: Path) -> None:
    # A fresh env from the same locks, packed again with different worker threads.
    again = build(
        options_for(
            packed.options.work,
            tmp_path / "out2",
            threads=1,
            pip_lock=packed.options.pip_lock,
            wheelhouse=packed.options.wheelhouse,
        )
    )
    first = packed.result.manifest_path.read_bytes()
    assert again.manifest_path.read_bytes().replace(b'"threads": 1', b'"threads": 2') == first
    for part in again.manifest.parts:
        assert (tmp_path / "out2" / part.name).read_bytes() == (packed.options.out / part.name).read_bytes()


def _run(cmd: list[str], **kw: object) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw).stdout  # type: ignore[call-overload]


@pytest.mark.slow
def test_unpack_elsewhere_and_relocate(packed: Packed, tmp_path: Path) -> None:
    manifest = read_manifest(packed.result.manifest_path)
    dest = tmp_path / "a-different" / "and-longer-install-path" / "env"
    _extract(packed.options.out, manifest, dest)
    assert str(dest) not in (dest / "share/hello-prefix/prefix.txt").read_text()
    _run([sys.executable, str(dest / "bin/conda-unpack")])
    assert (dest / "share/hello-prefix/prefix.txt").read_text() == f"prefix={dest}\n"
    out = _run([str(dest / "bin/hello-prefix")])
    assert out == f"prefix={dest}\nhello from the example env\n"
    assert _run([str(dest / "bin/python"), "-c", "import sys, ssl, json; print(sys.prefix)"]) == f"{dest}\n"
    env = dict(os.environ, PATH=f"{dest / 'bin'}:{os.environ['PATH']}")
    assert _run([str(dest / "bin/hello-noarch")], env=env) == f"hello-noarch in {dest}\n"
    assert _run([str(dest / "bin/tinycmd")], env=env) == f"tinypkg in {dest}\n"
    assert f"from {dest}/lib/python3.11/site-packages/pip" in _run(
        [str(dest / "bin/pip"), "--version"], env=env
    )


def test_no_build_prefix_left_after_relocation(packed: Packed, tmp_path: Path) -> None:
    manifest = read_manifest(packed.result.manifest_path)
    dest = tmp_path / "env"
    _extract(packed.options.out, manifest, dest)
    _run([str(dest / "bin/python"), str(dest / "bin/conda-unpack")])
    needle = str(packed.result.prefix).encode()
    leftovers = []
    for root, _dirs, files in os.walk(dest):
        for name in files:
            path = Path(root, name)
            # .pyc files name their source's build path, but the import system replaces it on load
            # (co_filename is fixed up from the real source path), so they need no relocation.
            if path.suffix != ".pyc" and not path.is_symlink() and needle in path.read_bytes():
                leftovers.append(str(path.relative_to(dest)))
    # Only conda-unpack itself may still name the build prefix (it is its search string).
    assert [p for p in leftovers if p != "bin/conda-unpack"] == []


def test_dest_prefix_artifact_needs_no_relocation(example_lock: Path, work: Path, tmp_path: Path) -> None:
    dest = tmp_path / "fixed" / "env"
    result = build(options_for(work, tmp_path / "out", dest_prefix=str(dest), name="fixed"))
    manifest = result.manifest
    assert manifest.dest_prefix == str(dest) and not manifest.relocatable
    assert manifest.extra["relocatable"] is False
    _extract(tmp_path / "out", manifest, dest)
    assert not (dest / "bin/conda-unpack").exists()
    assert _run([str(dest / "bin/hello-prefix")]) == f"prefix={dest}\nhello from the example env\n"
    assert _run([str(dest / "bin/python"), "-c", "import sys; print(sys.prefix)"]) == f"{dest}\n"


def test_env_id_is_an_input_address(packed: Packed, tmp_path: Path) -> None:
    from pack.build import env_id

    o = packed.options
    locks = {"conda-linux-64.lock": "a" * 64}
    base = env_id("linux-64", locks, o, 0)
    assert base == env_id("linux-64", dict(locks), o, 0)
    assert base != env_id("linux-64", {"conda-linux-64.lock": "b" * 64}, o, 0)
    assert base != env_id("linux-aarch64", locks, o, 0)
    assert base != env_id("linux-64", locks, o, 1)
    from dataclasses import replace

    assert base == env_id("linux-64", locks, replace(o, threads=7, part_size=123, out=tmp_path), 0)
    assert base != env_id("linux-64", locks, replace(o, level=19), 0)
    assert base != env_id("linux-64", locks, replace(o, dest_prefix="/x"), 0)


def test_reuse_keeps_a_verified_pack_and_rebuilds_a_damaged_one(packed: Packed, tmp_path: Path) -> None:
    """`--reuse` (what a second `just demo` relies on): same inputs and verified parts -> nothing rebuilt;
    a part that no longer verifies -> a full build that restores it."""
    import shutil
    from dataclasses import replace

    out = tmp_path / "out"
    shutil.copytree(packed.options.out, out)
    options = replace(packed.options, out=out, reuse=True)
    manifest_bytes = (out / "manifest.json").read_bytes()
    stamp = {p.name: (out / p.name).stat().st_mtime_ns for p in packed.result.manifest.parts}
    kept = build(options)
    assert kept.manifest == packed.result.manifest
    assert {p.name: (out / p.name).stat().st_mtime_ns for p in kept.manifest.parts} == stamp

    first = out / packed.result.manifest.parts[0].name
    data = bytearray(first.read_bytes())
    data[len(data) // 2] ^= 0xFF
    first.write_bytes(bytes(data))
    rebuilt = build(options)
    assert (out / "manifest.json").read_bytes() == manifest_bytes
    assert sha256_file(first) == rebuilt.manifest.parts[0].sha256


def test_prune_removes_pip_files_and_changes_env_id(packed: Packed, tmp_path: Path) -> None:
    from dataclasses import replace

    from packtest_helpers import NAME

    from pack.errors import PackError

    pattern = f"lib/python3.*/site-packages/{NAME}/__init__.py"
    pruned = build(replace(packed.options, out=tmp_path / "out", prune=(pattern,)))
    assert pruned.manifest.env_id != packed.result.manifest.env_id
    assert pruned.manifest.extra["pack_options"]["prune"] == [pattern]
    before = {m.name for m in _members(_stream(packed.options.out, packed.result.manifest))}
    after = {m.name for m in _members(_stream(tmp_path / "out", pruned.manifest))}
    assert sorted(before - after) == [n for n in sorted(before) if n.endswith(f"{NAME}/__init__.py")] != []
    # Files of conda packages are refused: conda-pack would call the env broken.
    with pytest.raises(PackError, match=r"matches files of conda packages: share/hello-prefix/greeting\.txt"):
        build(replace(packed.options, out=tmp_path / "bad", prune=("share/hello-prefix/greeting.txt",)))
    for bad in ("/etc/*", "../x", ""):
        with pytest.raises(PackError, match="--prune"):
            build(replace(packed.options, out=tmp_path / "bad", prune=(bad,)))
