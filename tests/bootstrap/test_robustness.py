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
    Placement,
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
def test_eight_installers_one_download(tmp_path: Path, server: Server, artifact: Artifact,
                                       placement: Placement) -> None:
    """Eight workers (eight containers) start at once on an empty volume: one download."""
    vol = tmp_path / "vol"
    vol.mkdir()
    server.faults.chunk, server.faults.delay_per_chunk = 1000, 0.03  # long enough for all to pile up
    procs = [spawn_bootstrap(*_args(server, vol), env=placement.env(f"c{i}")) for i in range(8)]
    outs = [p.communicate(timeout=180) for p in procs]
    results = []
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    paths = {str(placement.ready_path(vol, artifact, f"c{i}")) for i in range(8)}
    assert {r["path"] for r in results} == paths and len(paths) == (1 if placement.mode == "volume" else 8)
    size = artifact.manifest.archive.size
    assert sum(r["downloaded_bytes"] for r in results) == size
    manifests = len(artifact.manifest_path.read_bytes()) * 8
    assert server.bytes_served - manifests <= size * 1.05  # about 1x the archive, not 8x
    assert sum(1 for _, err in outs if "waiting for pid" in err) >= 1  # waiters logged the holder
    for i in range(8):
        assert placement.check_never_broken(vol, artifact, f"c{i}")


@pytest.mark.slow
def test_kill_9_at_random_points_converges(tmp_path: Path, server: Server, placement: Placement) -> None:
    artifact = make_env_artifact(server.root, part_size=30_000, big=240_000, n_files=300)
    server.faults.chunk, server.faults.delay_per_chunk = 8000, 0.004
    rng = random.Random(1234)
    # One uninterrupted run tells how long a cold install takes here; kills land across all of it.
    probe = tmp_path / "probe"
    probe.mkdir()
    t0 = time.monotonic()
    assert run_bootstrap(*_args(server, probe), env=placement.env("probe")).code == 0
    full = time.monotonic() - t0
    shutil.rmtree(probe)
    vol = tmp_path / "vol"
    vol.mkdir()
    said_ready = interrupted = 0
    containers = ["c0"]
    for trial in range(12):
        # The same worker restarting (its disk kept), or a new one (an empty disk): both must converge.
        if rng.random() < 0.4:
            containers.append(f"c{trial + 1}")
        container = containers[-1]
        proc = spawn_bootstrap(*_args(server, vol), env=placement.env(container))
        time.sleep(rng.uniform(0.05, full * 1.1))
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        ready = placement.check_never_broken(vol, artifact, container)
        said_ready += ready
        interrupted += not ready
        if ready and rng.random() < 0.5:  # start over from an empty volume now and then
            shutil.rmtree(vol)
            vol.mkdir()
    assert interrupted >= 3  # the kills did land mid-install (else this test would prove nothing)
    for container in (containers[-1], "fresh"):
        final = run_bootstrap(*_args(server, vol), env=placement.env(container))
        assert final.code == 0, final.stderr
        assert placement.check_never_broken(vol, artifact, container)
    assert list((vol / "trash").iterdir()) == []


def test_holder_killed_waiter_takes_over(tmp_path: Path, server: Server, artifact: Artifact,
                                         placement: Placement) -> None:
    vol = tmp_path / "vol"
    vol.mkdir()
    server.faults.chunk, server.faults.delay_per_chunk = 500, 0.05  # the first installer is slow
    first = spawn_bootstrap(*_args(server, vol), env=placement.env("c1"))
    lease = vol / "leases" / f"{artifact.env_id}.lease"
    deadline = time.monotonic() + 30
    while not lease.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    second = spawn_bootstrap(*_args(server, vol), env=placement.env("c2"))
    time.sleep(0.5)
    first.send_signal(signal.SIGKILL)
    first.communicate()
    server.faults.delay_per_chunk = 0.0
    out, err = second.communicate(timeout=120)
    assert second.returncode == 0, err
    assert json.loads(out.strip().splitlines()[-1])["status"] == "ready"
    assert "took over stale lease" in err
    assert placement.check_never_broken(vol, artifact, "c2")
    # The killed worker's container, started again, converges too.
    again = run_bootstrap(*_args(server, vol), env=placement.env("c1"))
    assert again.code == 0, again.stderr
    assert placement.check_never_broken(vol, artifact, "c1")


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
    _check_never_broken = Placement("volume", tmp_path).check_never_broken
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


def test_broken_tree_under_old_marker_is_not_ready(tmp_path: Path, server: Server, artifact: Artifact,
                                                   placement: Placement) -> None:
    vol = tmp_path / "vol"
    vol.mkdir()
    assert run_bootstrap(*_args(server, vol), env=placement.env()).code == 0
    env_dir = placement.ready_path(vol, artifact)
    assert env_dir is not None
    # Simulate a re-extraction that died half-way under the old marker: new stamp, partial tree.
    shutil.rmtree(env_dir)
    env_dir.mkdir()
    (env_dir / ".bootstrap-install").write_text("another-install")
    assert not placement.check_never_broken(vol, artifact)
    run = run_bootstrap(*_args(server, vol), env=placement.env())
    # The volume placement downloads again (its parts were removed after commit); the parts one
    # extracts again from the parts the volume keeps.
    again = artifact.manifest.archive.size if placement.mode == "volume" else 0
    assert run.code == 0 and run.result["downloaded_bytes"] == again
    assert placement.check_never_broken(vol, artifact)


def test_damaged_parts_on_the_volume_are_fetched_again(tmp_path: Path, server: Server,
                                                       artifact: Artifact) -> None:
    """Committed parts that no longer hash right (the volume corrupted one) are found by the next
    container's whole-archive check; only the bad part is fetched again, and every tree is right."""
    placement = Placement("parts", tmp_path)
    vol = tmp_path / "vol"
    vol.mkdir()
    assert run_bootstrap(*_args(server, vol), env=placement.env("c1")).code == 0
    part = artifact.manifest.parts[1]
    path = vol / "parts" / artifact.env_id / part.name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    served = server.bytes_served
    run = run_bootstrap(*_args(server, vol), env=placement.env("c2"))
    assert run.code == 0, run.stderr
    assert run.result["downloaded_bytes"] == part.size
    assert server.bytes_served - served == part.size + len(artifact.manifest_path.read_bytes())
    assert f"part {part.name} on the volume is damaged" in run.stderr
    assert placement.check_never_broken(vol, artifact, "c2")


def test_container_disk_full_fails_clearly_and_keeps_the_parts(tmp_path: Path, server: Server) -> None:
    """Placement parts with a container disk too small for the env: preflight says so before a byte
    lands there; the parts stay verified on the volume for a worker with room."""
    artifact = make_env_artifact(server.root, part_size=200_000, big=1_500_000, n_files=20)
    placement = Placement("parts", tmp_path)
    vol = tmp_path / "vol"
    vol.mkdir()
    small = placement.container("small")
    small.parent.mkdir(parents=True)
    _mount_tmpfs(small, "600k")
    try:
        run = run_bootstrap(*_args(server, vol), env=placement.env("small"))
        assert run.code == 13 and run.result["phase"] == "preflight", run.stderr
        assert "not enough free space" in run.result["error"]
    finally:
        _umount(small)
    roomy = run_bootstrap(*_args(server, vol), env=placement.env("roomy"))
    assert roomy.code == 0, roomy.stderr
    assert placement.check_never_broken(vol, artifact, "roomy")


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
