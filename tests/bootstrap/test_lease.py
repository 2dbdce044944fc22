"""The lease: exclusive among real processes, stale takeover after kill -9, a lost holder notices."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from worker.bootstrap.lease import InUse, Lease, LeaseLost, live_users

ROOT = Path(__file__).resolve().parents[2]


def _spawn(code: str, *args: str) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args], env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def test_acquire_release_and_holder(tmp_path: Path) -> None:
    a = Lease(tmp_path / "x.lease", ttl_s=5, heartbeat_s=1)
    b = Lease(tmp_path / "x.lease", ttl_s=5, heartbeat_s=1)
    assert a.holder() is None
    assert a.try_acquire()
    assert not b.try_acquire()
    info = b.holder()
    assert info is not None and info["pid"] == os.getpid() and not info["stale"]
    a.set_progress({"message": "halfway"})
    assert b.read_progress() == {"message": "halfway"}
    a.release()
    assert a.holder() is None and not a.progress_path.exists()
    assert b.try_acquire()
    b.release()


def test_processes_never_overlap(tmp_path: Path) -> None:
    # Each process takes the lease 15 times and checks that nobody else is inside at the same time.
    code = """
        import os, sys, time
        from pathlib import Path
        from worker.bootstrap.lease import Lease
        d = Path(sys.argv[1])
        for _ in range(15):
            with Lease(d / "x.lease", ttl_s=10, heartbeat_s=2, poll_s=0.005):
                inside = d / "inside"
                fd = os.open(inside, os.O_CREAT | os.O_EXCL | os.O_WRONLY)  # fails if someone is inside
                os.close(fd)
                time.sleep(0.002)
                with open(d / "count", "a") as fh:
                    fh.write("x")
                os.unlink(inside)
    """
    procs = [_spawn(code, str(tmp_path)) for _ in range(6)]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    assert (tmp_path / "count").read_text() == "x" * 90


def test_stale_takeover_after_kill(tmp_path: Path) -> None:
    code = """
        import sys, time
        from worker.bootstrap.lease import Lease
        lease = Lease(sys.argv[1], ttl_s=1.5, heartbeat_s=0.3)
        assert lease.try_acquire()
        print("held", flush=True)
        time.sleep(60)
    """
    p = _spawn(code, str(tmp_path / "x.lease"))
    assert p.stdout is not None and p.stdout.readline().strip() == "held"
    waiter = Lease(tmp_path / "x.lease", ttl_s=1.5, heartbeat_s=0.3)
    assert not waiter.try_acquire()
    p.send_signal(signal.SIGKILL)
    p.wait()
    waiter.acquire(timeout_s=30)  # the dead process ran on this host: stale at once
    info = json.loads((tmp_path / "x.lease").read_text())
    assert info["pid"] == os.getpid() and info["generation"] == 2
    waiter.release()


def test_stale_by_unchanged_heartbeat_on_another_host(tmp_path: Path) -> None:
    # A holder on another host that stops beating: we only see its file stop changing.
    path = tmp_path / "x.lease"
    path.write_text(json.dumps({"pid": 1, "host": "elsewhere", "nonce": "n0", "generation": 7}))
    lease = Lease(path, ttl_s=1.0, heartbeat_s=0.2, poll_s=0.05)
    assert not lease.try_acquire()
    lease.acquire(timeout_s=20)
    assert json.loads(path.read_text())["generation"] == 8
    lease.release()


def test_two_takers_cannot_both_win(tmp_path: Path) -> None:
    path = tmp_path / "x.lease"
    path.write_text(json.dumps({"pid": 1, "host": "elsewhere", "nonce": "dead", "generation": 1}))
    old = time.time() - 3600
    os.utime(path, (old, old))
    code = """
        import sys
        from worker.bootstrap.lease import Lease
        lease = Lease(sys.argv[1], ttl_s=5, heartbeat_s=1)
        print("won" if lease.try_acquire() else "lost", flush=True)
        sys.stdin.read()  # hold on (a dead holder would be stale at once) until everyone answered
    """
    procs = [_spawn(code, str(path)) for _ in range(6)]
    results = [p.stdout.readline().strip() for p in procs if p.stdout is not None]
    for p in procs:
        p.communicate(input="", timeout=60)
    assert results.count("won") == 1, results


def test_holder_notices_takeover(tmp_path: Path) -> None:
    path = tmp_path / "x.lease"
    lease = Lease(path, ttl_s=2, heartbeat_s=0.1)
    assert lease.try_acquire()
    lease.check()
    path.write_text(json.dumps({"pid": 1, "host": "elsewhere", "nonce": "thief", "generation": 2}))
    deadline = time.monotonic() + 10
    while not lease.lost and time.monotonic() < deadline:
        time.sleep(0.05)
    with pytest.raises(LeaseLost):
        lease.check()
    lease.release()
    assert json.loads(path.read_text())["nonce"] == "thief"  # release never removes another's lease


def test_in_use_registration(tmp_path: Path) -> None:
    reg = InUse.for_env(tmp_path / "inuse", heartbeat_s=0.1).start()
    assert live_users(tmp_path / "inuse") == [reg.path]
    old = time.time() - 3600
    os.utime(reg.path, (old, old))
    reg.stop()
    assert live_users(tmp_path / "inuse") == []
