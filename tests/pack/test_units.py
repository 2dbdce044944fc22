"""Small pieces: the part splitter, option validation, lock parsing, the CLI contract."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pack.archive import PartWriter
from pack.errors import PackError
from pack.lockfile import pip_lock_digest, read_conda_lock
from pack.options import PackOptions

REPO = Path(__file__).resolve().parents[2]


@settings(max_examples=40, deadline=None)
@given(
    chunks=st.lists(st.binary(min_size=0, max_size=300), min_size=1, max_size=20),
    part_size=st.integers(min_value=1, max_value=700),
)
def test_part_writer_splits_and_hashes(
    tmp_path_factory: pytest.TempPathFactory, chunks: list[bytes], part_size: int
) -> None:
    out = tmp_path_factory.mktemp("parts")
    writer = PartWriter(out, "x.tar.zst", part_size)
    for chunk in chunks:
        assert writer.write(chunk) == len(chunk)
    writer.finish()
    data = b"".join(chunks)
    assert writer.size == len(data) and writer.total.hexdigest() == hashlib.sha256(data).hexdigest()
    expected_parts = max(1, -(-len(data) // part_size))
    assert [p.name for p in writer.parts] == [f"x.tar.zst.{i:03d}" for i in range(expected_parts)]
    joined = b""
    for part in writer.parts:
        body = (out / part.name).read_bytes()
        assert len(body) == part.size <= part_size and hashlib.sha256(body).hexdigest() == part.sha256
        joined += body
    assert joined == data
    assert sorted(os.listdir(out)) == [p.name for p in writer.parts]  # no temp files left


def test_options_collect_every_issue() -> None:
    with pytest.raises(PackError) as err:
        PackOptions(
            level=40, threads=0, long=5, part_size=2 * 1024**3, name="../x", dest_prefix="rel"
        ).validate()
    msg = str(err.value)
    for flag in ("--level", "--threads", "--long", "--part-size", "--name", "--dest-prefix"):
        assert flag in msg
    assert err.value.phase == "options"


def test_lock_relative_urls_and_errors(tmp_path: Path) -> None:
    sha = "a" * 64
    (tmp_path / "conda-linux-64.lock").write_text(
        f"# platform: linux-64\n@EXPLICIT\nlinux-64/p-1-0.conda#{sha}\n"
        f"https://example.invalid/noarch/q-1-0.conda#{sha.upper()}\n"
    )
    lock = read_conda_lock(tmp_path / "conda-linux-64.lock")
    assert lock.platform == "linux-64"
    assert lock.entries[0].url == (tmp_path / "linux-64/p-1-0.conda").as_uri()
    assert lock.entries[1].sha256 == sha and lock.entries[1].filename == "q-1-0.conda"
    assert lock.digest == hashlib.sha256((tmp_path / "conda-linux-64.lock").read_bytes()).hexdigest()
    (tmp_path / "bad.lock").write_text("linux-64/p-1-0.conda\n")
    with pytest.raises(PackError) as err:
        read_conda_lock(tmp_path / "bad.lock")
    assert "@EXPLICIT" in str(err.value) and "line 1" in str(err.value)


def test_pip_lock_continuation_lines(tmp_path: Path) -> None:
    (tmp_path / "ok.txt").write_text("# c\na==1 \\\n    --hash=sha256:" + "b" * 64 + "\n--index-url x\n")
    assert (
        pip_lock_digest(tmp_path / "ok.txt") == hashlib.sha256((tmp_path / "ok.txt").read_bytes()).hexdigest()
    )


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pack", "build", "--threads", "0", "--work", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.strip().splitlines()[-1].startswith("error: pack options: --threads must be >= 1")


def test_cli_build_prints_manifest_path_last(work: Path, example_lock: Path, tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pack",
            "build",
            "--work",
            str(work),
            "--out",
            str(tmp_path / "o"),
            "--level",
            "1",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    assert proc.stdout.splitlines()[-1] == str(tmp_path / "o" / "manifest.json")
    assert "reusing channel" in proc.stderr  # logs on stderr; the channel was built once per session


def test_lock_relative_urls_against_a_channel_root(tmp_path: Path) -> None:
    (tmp_path / "l.lock").write_text("@EXPLICIT\nlinux-64/p-1-0.conda#" + "c" * 64 + "\n")
    lock = read_conda_lock(tmp_path / "l.lock", "https://mirror.invalid/conda-forge")
    assert lock.entries[0].url == "https://mirror.invalid/conda-forge/linux-64/p-1-0.conda"
