"""Parts -> ``<volume>/downloads/<env_id>/``: in parallel, resumable, hashed while they arrive.

Each part is written to ``<part>.partial`` (appending: a restart resumes it with HTTP Range after
re-hashing what is there) and renamed to ``<part>`` only once its sha256 matches. A part that fails
verification is deleted and fetched again, alone. ``Downloads`` also publishes how many bytes of each
part are on disk, so ``ArchiveStream`` (worker/bootstrap/stream.py) can feed the extractor while the
download is still running.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import threading
import urllib.parse
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from artifact.files import fsync_path
from artifact.manifest import Manifest, Part

from .errors import BootstrapError
from .fetch import CHUNK, FetchError, Transport, read_chunk

log = logging.getLogger("download")

MAX_VERIFY_FAILURES = 3


class DownloadError(BootstrapError):
    def __init__(self, message: str, remedy: str = "") -> None:
        super().__init__("download", message, remedy)


class _Cancelled(DownloadError):
    """Stopped because another part failed for good, or the install is over."""


class StreamRestart(Exception):
    """A part the stream already read from was fetched again: what was read may differ; start over."""


@dataclass(frozen=True)
class PartFile:
    index: int
    part: Part
    url: str
    final: Path
    partial: Path


def human_mb(n: float) -> str:
    return f"{n / 1e6:,.1f} MB"


class Downloads:
    """Downloads every part of a manifest; thread-safe view of what is on disk."""

    def __init__(self, manifest: Manifest, manifest_url: str, directory: Path, transport: Transport,
                 parallel: int = 4, check: Callable[[], None] = lambda: None) -> None:
        self.manifest = manifest
        self.dir = directory
        self.transport = transport
        self.parallel = max(1, parallel)
        self.check = check
        self.files = [PartFile(i, p, urllib.parse.urljoin(manifest_url, p.name), directory / p.name,
                               directory / f"{p.name}.partial") for i, p in enumerate(manifest.parts)]
        self._cond = threading.Condition()
        self.available = [0] * len(self.files)
        self.generation = [0] * len(self.files)
        self.done = [False] * len(self.files)
        self.error: BaseException | None = None
        self.network_bytes = 0
        self._cancel = threading.Event()
        self._thread: threading.Thread | None = None

    # -- driving -------------------------------------------------------------------------------
    def start(self) -> Downloads:
        self.dir.mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(target=self._run, name="download", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        errors: list[BaseException] = []
        with ThreadPoolExecutor(self.parallel, thread_name_prefix="part") as pool:
            # Submitted in archive order so the streaming extractor is fed from the front.
            futures = [pool.submit(self._part, f) for f in self.files]
            for future in futures:
                exc = future.exception()
                if exc is not None:
                    errors.append(exc)
        if errors:  # the first real failure, not the parts it cancelled; handed to whoever waits
            real = [e for e in errors if not isinstance(e, _Cancelled)] or errors
            with self._cond:
                if self.error is None:
                    self.error = real[0]
                self._cond.notify_all()

    def wait(self) -> None:
        """Block until every part is verified on disk; raise the first failure."""
        with self._cond:
            while not all(self.done) and self.error is None:
                self._cond.wait(1.0)
            if self.error is not None:
                raise self.error

    def cancel(self) -> None:
        self._cancel.set()
        if self._thread is not None:
            self._thread.join()

    def redo(self, indexes: list[int]) -> None:
        """Forget verified parts whose bytes proved wrong later; fetch them again."""
        with self._cond:
            for i in indexes:
                self.done[i] = False
                self.available[i] = 0
                self.generation[i] += 1
                with contextlib.suppress(FileNotFoundError):
                    self.files[i].final.unlink()
        self.error = None
        self._cancel.clear()
        self.start()

    @property
    def total(self) -> int:
        return self.manifest.archive.size

    @property
    def on_disk(self) -> int:
        with self._cond:
            return sum(self.available)

    # -- one part ----------------------------------------------------------------------------------
    def _publish(self, i: int, available: int, *, done: bool = False, new_generation: bool = False) -> None:
        with self._cond:
            self.available[i] = available
            self.done[i] = done
            if new_generation:
                self.generation[i] += 1
            self._cond.notify_all()

    def _part(self, f: PartFile) -> None:
        try:
            self._part_unsafe(f)
        except BaseException as exc:
            self._cancel.set()  # one part failed for good: stop the others at once
            if isinstance(exc, OSError):
                raise self._os_error(f, exc) from None
            raise

    def _os_error(self, f: PartFile, exc: OSError) -> DownloadError:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return DownloadError(f"no space left on the volume while writing part {f.part.name}",
                                 "grow the network volume or remove old envs (see `python -m "
                                 "worker.bootstrap doctor`); after that the next start resumes from the "
                                 "parts already on the volume")
        return DownloadError(f"could not write part {f.part.name} to {self.dir}: {exc.strerror or exc}",
                             "check the volume (mounted read-write? healthy?)")

    def _part_unsafe(self, f: PartFile) -> None:
        if _size(f.final) == f.part.size:
            self._publish(f.index, f.part.size, done=True)  # verified before its rename: trusted
            return
        with contextlib.suppress(FileNotFoundError):
            f.final.unlink()  # wrong size: left by something else; fetch again
        policy = self.transport.policy
        attempt = failures = 0
        state: tuple[int, hashlib._Hash] | None = None
        while True:
            self._check()
            if state is None:  # otherwise resume from memory: no need to re-hash what is on disk
                state = self._resume_state(f)
                self._publish(f.index, state[0])
            have, digest = state
            state = None
            try:
                if have < f.part.size:
                    before = have
                    have, digest = self._fetch_into(f, have, digest)
                    attempt = 0 if have > before else attempt  # progress resets the retry budget
                    if have < f.part.size:
                        raise FetchError(f"{f.url}: short read ({have} of {f.part.size} bytes)",
                                         retryable=True)
            except FetchError as exc:
                attempt += 1
                state = getattr(exc, "partial_state", None)
                if exc.status == 416:
                    _truncate(f.partial)
                    state = None
                if not policy.should_retry(exc, attempt):
                    raise DownloadError(f"part {f.part.name}: {exc.message}", exc.remedy) from None
                wait = policy.delay(attempt, exc.retry_after)
                log.warning("part %s: retry %d/%d in %.1f s (resuming at %s): %s", f.part.name, attempt,
                            policy.attempts - 1, wait, human_mb(_size(f.partial) or 0), exc.message)
                self._sleep(wait)
                continue
            got_hex = digest.hexdigest()
            if got_hex == f.part.sha256:
                fsync_path(f.partial)
                os.replace(f.partial, f.final)
                self._publish(f.index, f.part.size, done=True)
                log.info("part %s verified (%s)", f.part.name, human_mb(f.part.size))
                return
            failures += 1
            f.partial.unlink()
            self._publish(f.index, 0, new_generation=True)
            if failures >= MAX_VERIFY_FAILURES:
                raise DownloadError(
                    f"part {f.part.name} failed verification {failures} times "
                    f"(expected sha256 {f.part.sha256}, got {got_hex})",
                    "the published part differs from the manifest: re-publish the release, or check a proxy")
            log.warning("part %s failed verification (expected sha256 %s, got %s): fetching it again, alone",
                        f.part.name, f.part.sha256, got_hex)

    def _resume_state(self, f: PartFile) -> tuple[int, hashlib._Hash]:
        digest = hashlib.sha256()
        have = _size(f.partial)
        if have is None:
            return 0, digest
        if have > f.part.size:
            _truncate(f.partial)
            self._publish(f.index, 0, new_generation=True)
            return 0, digest
        with open(f.partial, "rb") as fh:
            while chunk := fh.read(CHUNK):
                digest.update(chunk)
        if have:
            log.info("part %s: resuming at %s of %s", f.part.name, human_mb(have), human_mb(f.part.size))
        return have, digest

    def _fetch_into(self, f: PartFile, have: int, digest: hashlib._Hash) -> tuple[int, hashlib._Hash]:
        """Append what the server sends to the partial file; returns the new size and digest.

        A failure mid-way raises, and the caller resumes from the size on disk (bytes written are
        flushed before they are counted, so disk and digest agree).
        """
        body = self.transport.open(f.url, have)
        try:
            with open(f.partial, "ab") as out:
                if body.offset != have:  # the server ignored Range: start this part over
                    out.truncate(0)
                    digest = hashlib.sha256()
                    self._publish(f.index, 0, new_generation=True)
                    have = 0
                while chunk := read_chunk(body):
                    self._check()
                    if have + len(chunk) > f.part.size:
                        raise FetchError(f"{f.url}: server sent more than the {f.part.size} bytes expected",
                                         retryable=True)
                    out.write(chunk)
                    out.flush()  # the streaming reader reads the file, not our buffer
                    digest.update(chunk)
                    have += len(chunk)
                    with self._cond:
                        self.network_bytes += len(chunk)
                        self.available[f.index] = have
                        self._cond.notify_all()
        except FetchError as exc:
            exc.partial_state = (have, digest)  # type: ignore[attr-defined]
            raise
        finally:
            body.close()
        return have, digest

    def _check(self) -> None:
        if self._cancel.is_set():
            raise _Cancelled("cancelled")
        self.check()

    def _sleep(self, seconds: float) -> None:
        if self._cancel.wait(seconds):
            raise _Cancelled("cancelled")


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return None


def _truncate(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.truncate(path, 0)
