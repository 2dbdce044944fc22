"""Read the locks: the conda ``@EXPLICIT`` lock (``url#sha256``) and the hashed pip lock.

A conda lock line may also be a URL relative to the lock file's directory (``linux-64/x.conda#sha``):
the bundled example env's lock sits in its build-time channel this way, so its bytes (and so its
digest and the env_id) do not depend on where the checkout lives. micromamba gets a resolved copy.
"""

from __future__ import annotations

import hashlib
import logging
import re
import shutil
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from artifact.files import sha256_file

from .errors import PackError

log = logging.getLogger(__name__)

_LINE = re.compile(r"(?P<url>[^#\s]+)#(?P<sha>[0-9a-fA-F]{64})")
_PLATFORM = re.compile(r"#\s*platform:\s*(\S+)")


@dataclass(frozen=True)
class LockEntry:
    url: str  # absolute URL (relative lines are resolved against the lock's directory)
    sha256: str

    @property
    def filename(self) -> str:
        return urllib.parse.unquote(self.url.rsplit("/", 1)[-1])


@dataclass(frozen=True)
class CondaLock:
    path: Path
    entries: tuple[LockEntry, ...]
    platform: str | None
    digest: str  # sha256 of the lock file's bytes

    def resolved_text(self) -> str:
        """The lock with absolute URLs, for tools (micromamba) that do not resolve relative ones."""
        lines = [f"# platform: {self.platform}"] if self.platform else []
        lines.append("@EXPLICIT")
        lines += [f"{e.url}#{e.sha256}" for e in self.entries]
        return "\n".join(lines) + "\n"


def find_conda_lock(path: Path, platform: str) -> Path:
    """A lock file, or the ``conda-<platform>.lock`` inside a directory."""
    if path.is_dir():
        candidate = path / f"conda-{platform}.lock"
        if not candidate.is_file():
            raise PackError(
                "lock",
                f"{path} has no conda-{platform}.lock",
                "run `just lock` where conda-forge is reachable (the lock workflow does), or pass the file",
            )
        return candidate
    if not path.is_file():
        raise PackError("lock", f"lock file {path} does not exist", "pass --lock FILE or DIR")
    return path


def read_conda_lock(path: Path, base: str | None = None) -> CondaLock:
    """Parse a lock; relative lines resolve against ``base`` (a channel root URL) or the lock's directory."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise PackError("lock", f"could not read {path}: {exc.strerror or exc}") from None
    text = data.decode("utf-8", errors="replace")
    if base is None:
        base = path.resolve().parent.as_uri() + "/"
    elif not base.endswith("/"):
        base += "/"
    entries: list[LockEntry] = []
    platform: str | None = None
    explicit = False
    issues: list[str] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            if m := _PLATFORM.match(line):
                platform = m.group(1)
            continue
        if line == "@EXPLICIT":
            explicit = True
            continue
        m = _LINE.fullmatch(line)
        if not m:
            issues.append(f"line {number}: expected URL#SHA256, got {line[:120]!r}")
            continue
        url = m.group("url")
        if "://" not in url:
            url = urllib.parse.urljoin(base, url)
        entries.append(LockEntry(url, m.group("sha").lower()))
    if not explicit:
        issues.insert(0, "no @EXPLICIT line (this is not an explicit conda lock)")
    if not entries and not issues:
        issues.append("no packages listed")
    if issues:
        raise PackError(
            "lock",
            f"{path} is not a usable lock: " + "; ".join(issues[:10]),
            "regenerate it with `just lock`",
        )
    return CondaLock(path, tuple(entries), platform, hashlib.sha256(data).hexdigest())


def fetch_packages(lock: CondaLock, download_dir: Path) -> list[Path]:
    """Local, hash-verified package files for every lock entry (file:// in place; http(s) downloaded).

    Every mismatch is collected first, then reported together.
    """
    files: list[Path] = []
    bad: list[str] = []
    for entry in lock.entries:
        scheme = urllib.parse.urlsplit(entry.url).scheme
        if scheme == "file":
            local = Path(urllib.request.url2pathname(urllib.parse.urlsplit(entry.url).path))
            if not local.is_file():
                raise PackError(
                    "lock",
                    f"package {local} listed in {lock.path} does not exist",
                    "rebuild the channel or regenerate the lock",
                )
        elif scheme in ("http", "https"):
            local = download_dir / entry.filename
            if not (local.is_file() and sha256_file(local) == entry.sha256):
                _download(entry.url, local)
        else:
            raise PackError(
                "lock", f"unsupported URL scheme in {entry.url}", "use file://, http:// or https://"
            )
        got = sha256_file(local)
        if got != entry.sha256:
            bad.append(f"{entry.filename}: sha256 {got} but the lock says {entry.sha256}")
        files.append(local)
    if bad:
        raise PackError(
            "verify",
            "package hash does not match the lock: " + "; ".join(bad),
            "the package changed after locking: regenerate the lock or restore the package",
        )
    return files


def _download(url: str, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    log.info("downloading %s", url)
    try:
        with urllib.request.urlopen(url, timeout=120) as resp, open(tmp, "wb") as fh:
            shutil.copyfileobj(resp, fh, 1 << 20)
    except OSError as exc:
        raise PackError(
            "fetch", f"could not download {url}: {exc}", "check the network or the lock's URLs"
        ) from None
    tmp.replace(dest)


def pip_lock_digest(path: Path) -> str:
    try:
        text = path.read_text()
    except OSError as exc:
        raise PackError("lock", f"could not read pip lock {path}: {exc.strerror or exc}") from None
    requirements = [ln for ln in logical_lines(text) if not ln.startswith("-")]
    unhashed = [ln.split()[0] for ln in requirements if "--hash=" not in ln]
    if unhashed:
        raise PackError(
            "lock",
            f"{path}: requirements without --hash: {', '.join(unhashed[:10])}",
            "generate the pip lock with hashes (`just lock`)",
        )
    return sha256_file(path)


def logical_lines(text: str) -> list[str]:
    """Requirement lines with backslash continuations joined and comments dropped."""
    lines: list[str] = []
    current = ""
    for raw in text.splitlines():
        line = raw.split(" #", 1)[0].rstrip() if not raw.lstrip().startswith("#") else ""
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        if current.strip():
            lines.append(" ".join(current.split()))
        current = ""
    if current.strip():
        lines.append(" ".join(current.split()))
    return lines
