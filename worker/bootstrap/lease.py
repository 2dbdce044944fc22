"""A lease file with a heartbeat: mutual exclusion among processes (and hosts) sharing a volume.

Network filesystems may not honour ``flock``, so exclusion rests on operations that are atomic on
every POSIX filesystem we target: creating a name that must not exist (``link``, or ``O_EXCL``) and
``rename``. ::

    lease = Lease(path, ttl_s=30.0, heartbeat_s=5.0)
    lease.try_acquire() -> bool    # free, or the holder's heartbeat is older than ttl_s (stale)
    lease.release()
    lease.holder() -> dict | None  # holder info (pid, host, started, nonce, generation) + heartbeat age
    with lease: ...                # blocks (polling) until acquired; heartbeats in a daemon thread

Protocol
- The lease file holds JSON owner info and a random ``nonce``; it is created complete (written to a
  temp file, then hard-linked to the lease name, which fails if the name exists; ``O_EXCL`` where
  links are not supported).
- The heartbeat touches the file's mtime and re-reads it: a holder whose nonce is gone lost the
  lease (it was judged stale and taken over) and ``lost`` is set; work loops call ``check()``.
- A holder is stale when its heartbeat is older than ``ttl_s`` by the wall clock (file mtime), or
  when this process has watched the file unchanged for ``ttl_s`` on its own monotonic clock (safe
  under clock skew), or at once when it ran on this host and its process is gone.
- Takeover of a stale lease: create the claim ``<path>.takeover-<stale nonce>`` exclusively (only
  one taker can), re-check the lease still holds that stale nonce, then ``os.replace`` a fresh file
  over it with ``generation + 1``. Two takers can therefore never both win.
- Progress: the holder may publish a small dict (``set_progress``); waiters read it to log what the
  holder is doing.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import socket
import threading
import time
from pathlib import Path
from typing import Any

from artifact.files import write_atomic

log = logging.getLogger("lease")

_CLAIM = ".takeover-"


class LeaseLost(RuntimeError):
    """This process held the lease, but another one took it over (our heartbeat was judged stale)."""


def _proc_start(pid: int) -> str | None:
    """Start time of a process in clock ticks since boot: tells a reused pid from the original."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may hold spaces and parentheses; the fields after the last ')' are fixed.
    fields = stat.rsplit(")", 1)[1].split()
    return fields[19] if len(fields) > 19 else None


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError):  # a damaged or hostile file reads as absent
        return None
    return data if isinstance(data, dict) else None


class Lease:
    """One lease file. Not reentrant; one ``Lease`` object per holder attempt is the intended use."""

    def __init__(self, path: str | os.PathLike[str], ttl_s: float = 30.0, heartbeat_s: float = 5.0,
                 poll_s: float | None = None, log_every_s: float = 5.0) -> None:
        if heartbeat_s >= ttl_s:
            raise ValueError(f"heartbeat_s ({heartbeat_s}) must be shorter than ttl_s ({ttl_s})")
        self.path = Path(path)
        self.ttl_s = ttl_s
        self.heartbeat_s = heartbeat_s
        self.poll_s = poll_s if poll_s is not None else min(1.0, heartbeat_s)
        self.log_every_s = log_every_s
        self.progress_path = self.path.with_name(self.path.name + ".progress")
        self._nonce: str | None = None
        self._lost = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # What we saw last time, and since when (monotonic): staleness measured on our own clock.
        self._seen: tuple[str, int] | None = None
        self._seen_since = 0.0

    # -- queries -------------------------------------------------------------------------------
    @property
    def held(self) -> bool:
        return self._nonce is not None and not self._lost.is_set()

    @property
    def lost(self) -> bool:
        return self._lost.is_set()

    def check(self) -> None:
        """Raise ``LeaseLost`` when another process took our lease over: stop writing at once."""
        if self._lost.is_set():
            raise LeaseLost(f"lease {self.path} was taken over by another process; stopping this one")

    def holder(self) -> dict[str, Any] | None:
        """The current holder's info plus ``heartbeat_age_s`` and ``stale``; None when free."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        info = _read_json(self.path) or {}
        info["heartbeat_age_s"] = max(0.0, time.time() - st.st_mtime)
        info["stale"] = self._is_stale(info, st.st_mtime_ns)
        return info

    def read_progress(self) -> dict[str, Any] | None:
        return _read_json(self.progress_path)

    # -- acquisition -----------------------------------------------------------------------------
    def _owner(self, generation: int) -> bytes:
        assert self._nonce is not None
        return json.dumps({
            "pid": os.getpid(), "host": socket.gethostname(), "proc_start": _proc_start(os.getpid()),
            "started": time.time(), "nonce": self._nonce, "generation": generation,
        }).encode()

    def try_acquire(self) -> bool:
        """Take the lease if it is free or stale; never blocks beyond a few file operations."""
        if self.held:
            return True
        self._nonce = secrets.token_hex(16)
        self._lost.clear()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self._create_exclusive(self._owner(1)):
            return self._won(1)
        info = self.holder()
        if info is None and self._create_exclusive(self._owner(1)):
            return self._won(1)  # released between our first attempt and the read
        if info is None or not info.get("stale"):
            self._nonce = None
            return False
        return self._take_over(info)

    def _create_exclusive(self, data: bytes) -> bool:
        tmp = self.path.with_name(f".{self.path.name}.{self._nonce}.new")
        try:
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            try:
                os.link(tmp, self.path)
                return True
            except FileExistsError:
                return False
            except OSError:  # a filesystem without hard links: O_EXCL, then fill the file
                return self._create_excl_fallback(data)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

    def _create_excl_fallback(self, data: bytes) -> bool:
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        return True

    def _take_over(self, stale: dict[str, Any]) -> bool:
        stale_nonce = str(stale.get("nonce") or "unreadable")
        claim = self.path.with_name(self.path.name + _CLAIM + stale_nonce)
        self._clear_old_claims()
        try:
            fd = os.open(claim, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            self._nonce = None
            return False
        os.close(fd)
        try:
            current = _read_json(self.path) or {}
            if str(current.get("nonce") or "unreadable") != stale_nonce:
                self._nonce = None  # someone released or replaced it meanwhile: not ours to take
                return False
            generation = int(stale.get("generation") or 0) + 1
            write_atomic(self.path, self._owner(generation))
            log.warning("took over stale lease %s from pid %s on %s (heartbeat %.0f s old)",
                        self.path, stale.get("pid"), stale.get("host"), stale.get("heartbeat_age_s", -1))
            return self._won(generation)
        finally:
            with contextlib.suppress(FileNotFoundError):
                claim.unlink()

    def _clear_old_claims(self) -> None:
        # A taker killed between claim and replace leaves its claim; after ttl anyone may remove it.
        for claim in self.path.parent.glob(self.path.name + _CLAIM + "*"):
            with contextlib.suppress(OSError):
                if time.time() - claim.stat().st_mtime > self.ttl_s:
                    claim.unlink()

    def _won(self, generation: int) -> bool:
        self._seen = None
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name=f"lease-heartbeat:{self.path.name}",
                                        daemon=True)
        self._thread.start()
        log.debug("acquired lease %s (generation %d)", self.path, generation)
        return True

    def _is_stale(self, info: dict[str, Any], mtime_ns: int) -> bool:
        if info.get("host") == socket.gethostname() and isinstance(info.get("pid"), int):
            alive_start = _proc_start(info["pid"])
            if alive_start is None or (info.get("proc_start") and alive_start != info["proc_start"]):
                return True
        if time.time() - mtime_ns / 1e9 > self.ttl_s:
            return True
        key = (str(info.get("nonce")), mtime_ns)
        now = time.monotonic()
        if key != self._seen:
            self._seen, self._seen_since = key, now
            return False
        return now - self._seen_since > self.ttl_s

    # -- holding ---------------------------------------------------------------------------------
    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                os.utime(self.path)
                current = _read_json(self.path)
            except OSError:
                current = None
            if current is None or current.get("nonce") != self._nonce:
                self._lost.set()
                log.error("lost lease %s: another process took it over after our heartbeat went stale",
                          self.path)
                return

    def set_progress(self, progress: dict[str, Any]) -> None:
        """Publish what the holder is doing, for waiters' logs (best effort)."""
        with contextlib.suppress(OSError):
            write_atomic(self.progress_path, json.dumps(progress).encode())

    def release(self) -> None:
        """Give the lease up if we still hold it; never removes another holder's lease."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.heartbeat_s + 1)
            self._thread = None
        nonce, self._nonce = self._nonce, None
        if nonce is None or self._lost.is_set():
            return
        # Move it aside first, then look: unlinking after a read could remove a taker's fresh lease.
        aside = self.path.with_name(f".{self.path.name}.{nonce}.release")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        moved = _read_json(aside) or {}
        if moved.get("nonce") == nonce:
            with contextlib.suppress(FileNotFoundError):
                self.progress_path.unlink()
            aside.unlink()
        else:
            with contextlib.suppress(OSError):
                os.link(aside, self.path)  # not ours: put it back unless a newer one is there already
            aside.unlink()

    def acquire(self, timeout_s: float | None = None) -> None:
        """Block until acquired, logging the holder and its progress every ``log_every_s``."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        next_log = time.monotonic() + self.log_every_s
        while not self.try_acquire():
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                raise TimeoutError(f"lease {self.path} still held after {timeout_s:.0f} s")
            if now >= next_log:
                next_log = now + self.log_every_s
                self._log_wait()
            time.sleep(self.poll_s)

    def _log_wait(self) -> None:
        info = self.holder() or {}
        progress = self.read_progress() or {}
        detail = progress.get("message") or "no progress reported yet"
        log.info("waiting for pid %s on %s (heartbeat %.0f s ago): %s", info.get("pid"), info.get("host"),
                 info.get("heartbeat_age_s", 0.0), detail)

    def __enter__(self) -> Lease:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


# -- "in use" registrations: a live worker pins its env against garbage collection -------------------
IN_USE_ENV = "BOOTSTRAP_IN_USE_FILE"
IN_USE_TTL_S = 600.0


class InUse:
    """A heartbeat file ``<dir>/<host>-<pid>.json`` saying "a live process runs this env".

    The bootstrap writes it before it execs the worker and passes its path in ``BOOTSTRAP_IN_USE_FILE``;
    the worker keeps it fresh with ``InUse.from_environ().start()`` (a daemon thread). GC never removes
    an env with a registration younger than ``IN_USE_TTL_S``. An env kept in two places (its parts on the
    volume, its tree on the container disk) is registered in both: ``also`` holds the other files, and the
    variable lists them all, ``os.pathsep``-separated.
    """

    def __init__(self, path: str | os.PathLike[str], heartbeat_s: float = 60.0,
                 also: tuple[Path, ...] = ()) -> None:
        self.path = Path(path)
        self.also = tuple(Path(p) for p in also)
        self.heartbeat_s = heartbeat_s
        self._stop = threading.Event()

    @property
    def paths(self) -> tuple[Path, ...]:
        return (self.path, *self.also)

    @classmethod
    def for_env(cls, in_use_dir: Path, heartbeat_s: float = 60.0) -> InUse:
        return cls(in_use_dir / f"{socket.gethostname()}-{os.getpid()}.json", heartbeat_s)

    @classmethod
    def from_environ(cls, heartbeat_s: float = 60.0) -> InUse | None:
        paths = [p for p in os.environ.get(IN_USE_ENV, "").split(os.pathsep) if p]
        return cls(paths[0], heartbeat_s, tuple(Path(p) for p in paths[1:])) if paths else None

    def with_also(self, other: InUse) -> InUse:
        return InUse(self.path, self.heartbeat_s, (*self.also, *other.paths))

    def environ_value(self) -> str:
        return os.pathsep.join(str(p) for p in self.paths)

    def touch(self) -> None:
        body = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "time": time.time()}).encode()
        for path in self.paths:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, body)

    def start(self) -> InUse:
        self.touch()
        threading.Thread(target=self._beat, name="in-use-heartbeat", daemon=True).start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            for path in self.paths:
                with contextlib.suppress(OSError):
                    os.utime(path)

    def stop(self) -> None:
        self._stop.set()
        for path in self.paths:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


def live_users(in_use_dir: Path, ttl_s: float = IN_USE_TTL_S) -> list[Path]:
    """Registrations in ``in_use_dir`` with a heartbeat younger than ``ttl_s``."""
    now = time.time()
    live: list[Path] = []
    for entry in sorted(in_use_dir.glob("*.json")) if in_use_dir.is_dir() else []:
        with contextlib.suppress(OSError):
            if now - entry.stat().st_mtime <= ttl_s:
                live.append(entry)
    return live
