"""Many workers on one volume, kill -9 at random moments, a full disk: the volume always converges and
nothing is ever reported ready over a broken tree."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from worker.bootstrap.commit import ready_path
from worker.bootstrap.layout import Layout
from worker.bootstrap.lease import InUse

from .conftest import (
    Artifact,
    Server,
    assert_tree_matches,
    bootstrap_env,
    build_tar,
    make_env_artifact,
    run_bootstrap,
    spawn_bootstrap,
    tiny_env_files,
    write_artifact,
)


def _args(server: Server, vol: Path) -> list[str]:
    return ["--manifest-url", server.manifest_url(), "--volume", str(vol), "--no-exec"]


@pytest.mark.slow
def test_eight_installers_one_download(tmp_path: Path, server: Server, artifact: Artifact) -> None:
    vol = tmp_path / "vol"
    vol.mkdir()
    server.faults.chunk, server.faults.delay_per_chunk = 1000, 0.03  # long enough for all to pile up
    procs = [spawn_bootstrap(*_args(server, vol)) for _ in range(8)]
    outs = [p.communicate(timeout=180) for p in procs]
    results = []
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert {r["path"] for r in results} == {str(vol / "envs" / artifact.env_id)}
    size = artifact.manifest.archive.size
    assert sum(r["downloaded_bytes"] for r in results) == size
    manifests = len(artifact.manifest_path.read_bytes()) * 8
    assert server.bytes_served - manifests <= size * 1.05  # about 1x the archive, not 8x
    assert sum(1 for _, err in outs if "waiting for pid" in err) >= 1  # waiters logged the holder
    assert_tree_matches(vol / "envs" / artifact.env_id, artifact.files)


def _check_never_broken(vol: Path, artifact: Artifact) -> bool:
    """If the volume says ready, the tree must be complete and right. Returns whether it said so."""
    path = ready_path(Layout(vol), artifact.manifest)
    if path is not None:
        assert_tree_matches(path, artifact.files)
    return path is not None


@pytest.mark.slow
def test_kill_9_at_random_points_converges(tmp_path: Path, server: Server) -> None:
    artifact = make_env_artifact(server.root, part_size=30_000, big=240_000, n_files=300)
    server.faults.chunk, server.faults.delay_per_chunk = 8000, 0.004
    rng = random.Random(1234)
    # One uninterrupted run tells how long a cold install takes here; kills land across all of it.
    probe = tmp_path / "probe"
    probe.mkdir()
    t0 = time.monotonic()
    assert run_bootstrap(*_args(server, probe)).code == 0
    full = time.monotonic() - t0
    shutil.rmtree(probe)
    vol = tmp_path / "vol"
    vol.mkdir()
    said_ready = interrupted = 0
    for _trial in range(12):
        proc = spawn_bootstrap(*_args(server, vol))
        time.sleep(rng.uniform(0.05, full * 1.1))
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        ready = _check_never_broken(vol, artifact)
        said_ready += ready
        interrupted += not ready
        if ready and rng.random() < 0.5:  # start over from an empty volume now and then
            shutil.rmtree(vol)
            vol.mkdir()
    assert interrupted >= 3  # the kills did land mid-install (else this test would prove nothing)
    final = run_bootstrap(*_args(server, vol))
    assert final.code == 0, final.stderr
    assert _check_never_broken(vol, artifact)
    assert list((vol / "trash").iterdir()) == []


def test_holder_killed_waiter_takes_over(tmp_path: Path, server: Server, artifact: Artifact) -> None:
    vol = tmp_path / "vol"
    vol.mkdir()
    server.faults.chunk, server.faults.delay_per_chunk = 500, 0.05  # the first installer is slow
    first = spawn_bootstrap(*_args(server, vol))
    lease = vol / "leases" / f"{artifact.env_id}.lease"
    deadline = time.monotonic() + 30
    while not lease.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    second = spawn_bootstrap(*_args(server, vol))
    time.sleep(0.5)
    first.send_signal(signal.SIGKILL)
    first.communicate()
    server.faults.delay_per_chunk = 0.0
    out, err = second.communicate(timeout=120)
    assert second.returncode == 0, err
    assert json.loads(out.strip().splitlines()[-1])["status"] == "ready"
    assert "took over stale lease" in err
    assert _check_never_broken(vol, artifact)


def _mount_tmpfs(where: Path, size: str) -> None:
    where.mkdir()
    cmd = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)]
    if os.geteuid() != 0:
        cmd = ["sudo", "-n", *cmd]
    try:
        subprocess.run(cmd, check=True, capture_output=True, timeout=30)
    except (subprocess.CalledProcessError, FileNotFoundError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"cannot mount a small tmpfs here ({exc}); disk-full is untested on this machine")


def _umount(where: Path) -> None:
    cmd = ["umount", str(where)]
    subprocess.run(cmd if os.geteuid() == 0 else ["sudo", "-n", *cmd], check=False, capture_output=True)


def test_disk_full(tmp_path: Path, server: Server) -> None:
    """A real small filesystem (tmpfs): a manifest that understates the unpacked size is refused by
    name as it is extracted (not by filling the disk, which would repeat at every start); preflight
    refuses an honest one up front, naming the volume for doctor; with room, the next run converges."""
    artifact = make_env_artifact(server.root, part_size=200_000, big=1_500_000, n_files=20,
                                 extra={"unpacked_size": 1000})
    vol = tmp_path / "small"
    _mount_tmpfs(vol, "1700k")
    try:
        run = run_bootstrap(*_args(server, vol))
        assert run.code == 15 and run.result["phase"] == "extract", run.stderr
        assert "more than the 1000 bytes of files its manifest declares (unpacked_size" in run.result["error"]
        assert "just pack" in run.result["remedy"]
        assert not _check_never_broken(vol, artifact)
        # An honest manifest is refused before a byte is downloaded.
        honest = json.loads(artifact.manifest_path.read_text())
        honest["unpacked_size"] = len(artifact.tar)
        artifact.manifest_path.write_text(json.dumps(honest))
        served = server.bytes_served
        run = run_bootstrap(*_args(server, vol))
        assert run.code == 13 and run.result["phase"] == "preflight"
        assert "not enough free space" in run.result["error"]
        assert f"doctor --volume {vol}`" in run.result["remedy"]  # the volume, not its envs/ directory
        assert server.bytes_served - served == len(artifact.manifest_path.read_bytes())
        # Room again: converges.
        subprocess.run(["mount", "-o", "remount,size=8m", str(vol)] if os.geteuid() == 0 else
                       ["sudo", "-n", "mount", "-o", "remount,size=8m", str(vol)], check=True)
        run = run_bootstrap(*_args(server, vol))
        assert run.code == 0, run.stderr
        assert _check_never_broken(vol, artifact)
    finally:
        _umount(vol)


def test_disk_full_mid_extraction_and_the_block_per_file_preflight_counts(tmp_path: Path,
                                                                          server: Server) -> None:
    """Many tiny files: each takes a block of its own, far more than its bytes. With the manifest's
    file_count, preflight counts the blocks and refuses up front; without it, extraction runs out of
    space and says so, with a remedy that holds; with room, the next run converges."""
    files = {f"lib/f{i:04d}.txt": b"0123456789" for i in range(400)}
    artifact = write_artifact(server.root, build_tar(files), files=files, file_count=len(files))
    vol = tmp_path / "small"
    _mount_tmpfs(vol, "1m")
    try:
        run = run_bootstrap(*_args(server, vol))
        assert run.code == 13 and "not enough free space" in run.result["error"], run.stderr
        blind = json.loads(artifact.manifest_path.read_text())
        del blind["file_count"]
        artifact.manifest_path.write_text(json.dumps(blind))
        run = run_bootstrap(*_args(server, vol))
        assert run.code == 15 and run.result["phase"] == "extract", run.stderr
        assert "no space left on the volume" in run.result["error"]
        assert "grow the network volume" in run.result["remedy"]
        assert not list((vol / "envs").glob("*.ready.json")) and list((vol / "trash").iterdir()) == []
        subprocess.run(["mount", "-o", "remount,size=8m", str(vol)] if os.geteuid() == 0 else
                       ["sudo", "-n", "mount", "-o", "remount,size=8m", str(vol)], check=True)
        run = run_bootstrap(*_args(server, vol))
        assert run.code == 0, run.stderr
        assert ready_path(Layout(vol), artifact.manifest) is not None
    finally:
        _umount(vol)


def test_broken_tree_under_old_marker_is_not_ready(tmp_path: Path, server: Server,
                                                   artifact: Artifact) -> None:
    vol = tmp_path / "vol"
    vol.mkdir()
    assert run_bootstrap(*_args(server, vol)).code == 0
    env_dir = vol / "envs" / artifact.env_id
    # Simulate a re-extraction that died half-way under the old marker: new stamp, partial tree.
    shutil.rmtree(env_dir)
    env_dir.mkdir()
    (env_dir / ".bootstrap-install").write_text("another-install")
    assert not _check_never_broken(vol, artifact)
    run = run_bootstrap(*_args(server, vol))
    assert run.code == 0 and run.result["downloaded_bytes"] == artifact.manifest.archive.size
    assert _check_never_broken(vol, artifact)


def test_bootstrap_env_is_clean() -> None:
    assert not any(k.startswith("RUNPOD_") for k in bootstrap_env())


def _snapshot(vol: Path, env_id: str) -> dict[str, object]:
    """Everything a worker could see of a committed env: each entry's type, mode and bytes (or link
    target), and the marker's bytes."""
    tree = vol / "envs" / env_id
    seen: dict[str, object] = {"<marker>": (vol / "envs" / f"{env_id}.ready.json").read_bytes()}
    for root, dirs, files in os.walk(tree):
        for name in sorted(dirs + files):
            path = Path(root) / name
            info = path.lstat()
            if path.is_symlink():
                seen[str(path.relative_to(tree))] = ("link", os.readlink(path))
            elif path.is_file():
                seen[str(path.relative_to(tree))] = ("file", info.st_mode, path.read_bytes())
            else:
                seen[str(path.relative_to(tree))] = ("dir", info.st_mode)
    return seen


@pytest.mark.parametrize("trial", range(3))
def test_a_committed_env_never_changes_under_a_same_env_id_manifest(tmp_path: Path, server: Server,
                                                                    trial: int) -> None:
    env_id = f"{trial:02d}" + "e" * 30
    arts = {}
    for name, n_files in (("a", 5), ("b", 9)):
        files = tiny_env_files(n_files=n_files)
        arts[name] = write_artifact(server.root / name, build_tar(files), part_size=8_000, env_id=env_id,
                                    files=files)
    assert arts["a"].manifest.archive.sha256 != arts["b"].manifest.archive.sha256
    vol = tmp_path / "vol"
    vol.mkdir()
    server.faults.chunk, server.faults.delay_per_chunk = 2000, 0.01  # installs overlap
    order = ["a", "b", "a", "b"]
    random.Random(trial).shuffle(order)
    procs = [spawn_bootstrap("--manifest-url", server.manifest_url(f"{n}/"), "--volume", str(vol),
                             "--no-exec") for n in order]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=180)
        assert p.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    marker = json.loads((vol / "envs" / f"{env_id}.ready.json").read_text())
    winner = next(n for n, a in arts.items() if a.manifest.archive.sha256 == marker["archive_sha256"])
    env_dir = vol / "envs" / env_id
    assert {r["path"] for r in results} == {str(env_dir)}
    assert_tree_matches(env_dir, arts[winner].files)
    assert sum(r["downloaded_bytes"] for r in results) == arts[winner].manifest.archive.size  # one install
    for name, r in zip(order, results, strict=True):
        if name != winner:  # used the committed env as it is, and said so
            assert r["committed_archive_sha256"] == marker["archive_sha256"], r
            assert r["manifest_archive_sha256"] == arts[name].manifest.archive.sha256
    # A live worker runs from it; the other manifest comes again: nothing changes, byte for byte.
    InUse(Layout(vol).in_use_dir(env_id) / "worker.json").touch()
    before = _snapshot(vol, env_id)
    loser = "b" if winner == "a" else "a"
    again = run_bootstrap("--manifest-url", server.manifest_url(f"{loser}/"), "--volume", str(vol),
                          "--no-exec")
    assert again.code == 0 and again.result["warm"] and again.result["downloaded_bytes"] == 0, again.stderr
    assert "already committed" in again.stderr and arts[loser].manifest.archive.sha256 in again.stderr
    assert _snapshot(vol, env_id) == before
    assert list((vol / "trash").iterdir()) == []
    # And the env still starts: exec into its interpreter (a shim that reports how it was started).
    started = run_bootstrap("--manifest-url", server.manifest_url(f"{loser}/"), "--volume", str(vol),
                            "--failure-handler", "off")
    shim = json.loads(started.stdout.strip().splitlines()[-1])
    assert started.code == 0 and shim["env"]["CONDA_PREFIX"] == str(env_dir), started.stderr
    assert _snapshot(vol, env_id) == before
