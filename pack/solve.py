"""``pack lock``: environment.yml -> DIR/conda-<platform>.lock (@EXPLICIT) + DIR/requirements.lock (--hash).

The conda part is solved with py-rattler against the channels the spec names (conda-forge in
production; a file:// channel works the same, which is how it is tested offline); the pip part is
compiled with ``uv pip compile --generate-hashes`` for the platform's manylinux tag and the spec's
Python, with DIR/pip-overrides.txt applied and the Python packages of the conda solve as constraints
(pack/agree.py: pip never replaces what conda installs).

Reproducible: nothing published after the cutoff (``exclude_newer`` for rattler, ``--exclude-newer``
for uv) is considered, and each lock records the cutoff and the digest of its inputs (pack/spec.py),
so the same spec and cutoff give the same bytes, and ``check`` tells a stale lock offline.
Both files are written atomically; nothing is written when a solve fails.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from artifact.files import write_atomic

from . import agree
from .errors import PackError
from .spec import (
    VIRTUAL_PACKAGES,
    Spec,
    format_cutoff,
    parse_cutoff,
    pip_platform,
    read_spec,
)

log = logging.getLogger(__name__)

PIP_LOCK = "requirements.lock"
OVERRIDES = "pip-overrides.txt"
# Header keys every lock carries (``# key: value`` lines before the first requirement).
DIGEST_KEY, CUTOFF_KEY, PYTHON_PACKAGES_KEY = "spec-sha256", "exclude-newer", "python-packages"
INDEX_OPTIONS = ("--index-url", "-i", "--no-index")


def conda_lock_name(platform: str) -> str:
    return f"conda-{platform}.lock"


def lock(
    spec_path: Path,
    out: Path,
    platform: str = "linux-64",
    only: str | None = None,
    exclude_newer: str | None = None,
) -> list[Path]:
    """Solve the spec into ``out``; returns the files written. Every part is solved and checked before
    any file is written."""
    spec = read_spec(spec_path)
    cutoff = parse_cutoff(exclude_newer)
    outputs: list[tuple[Path, bytes]] = []
    conda_pins: dict[str, str] | None = None
    if only in (None, "conda"):
        text, conda_pins = conda_lock_text(spec, platform, cutoff)
        outputs.append((out / conda_lock_name(platform), text))
    if only in (None, "pip") and spec.pip:
        if conda_pins is None:
            conda_pins = recorded_conda_pins(out / conda_lock_name(platform))
        outputs.append((out / PIP_LOCK, pip_lock_text(spec, platform, _overrides(out), conda_pins, cutoff)))
    out.mkdir(parents=True, exist_ok=True)
    for path, data in outputs:
        write_atomic(path, data)
        log.info("lock: wrote %s", path)
    return [path for path, _ in outputs]


# -- conda --------------------------------------------------------------------------------------------

def solve_conda(spec: Spec, platform: str, cutoff: datetime.datetime) -> list:
    """The solved RepoDataRecords, in topological order (dependencies first)."""
    from rattler import BuildString, GenericVirtualPackage, PackageName, PackageRecord, Version, solve

    virtual = [GenericVirtualPackage(PackageName(n), Version(v), BuildString("0"))
               for n, v in VIRTUAL_PACKAGES.items()]
    log.info("lock: solving %s for %s from %s, nothing newer than %s",
             ", ".join(spec.conda), platform, ", ".join(spec.channels), format_cutoff(cutoff))
    try:
        records = asyncio.run(solve(
            sources=list(spec.channels),
            specs=list(spec.conda),
            platforms=[platform, "noarch"],
            virtual_packages=virtual,
            exclude_newer=cutoff,
            # Packages indexed before timestamps were recorded are older than any cutoff we use.
            timestamp_policy="allow-missing",
        ))
    except Exception as exc:  # network and solver errors alike: the message says which
        raise PackError(
            "lock",
            f"could not solve the conda part from {', '.join(spec.channels)} "
            f"(nothing newer than {format_cutoff(cutoff)}): {exc}",
            "check the spec's conda dependencies and that its channels are reachable "
            "(conda-forge: run `just lock` in the lock workflow)",
        ) from exc
    # sort_topologically returns PackageRecords (no url): map them back to the solved records.
    by_key = {_key(r): r for r in records}
    return [by_key[_key(r)] for r in PackageRecord.sort_topologically(records)]


def _key(record: object) -> tuple[str, str, str, str]:
    return (record.name.normalized, str(record.version), record.build, record.subdir)  # type: ignore[attr-defined]


def conda_lock_text(spec: Spec, platform: str, cutoff: datetime.datetime) -> tuple[bytes, dict[str, str]]:
    """The @EXPLICIT lock's bytes and the Python packages it installs (name -> version)."""
    records = solve_conda(spec, platform, cutoff)
    missing = [r.name.normalized for r in records if not r.sha256]
    if missing:
        raise PackError(
            "lock", f"no sha256 in the channel for {', '.join(missing)}", "use a channel with sha256"
        )
    pins = agree.conda_python_pins(records)
    lines = [
        f"# Generated by `python -m pack lock` from {spec.path.name} (the conda part). Do not edit.",
        f"# {DIGEST_KEY}: {spec.conda_digest(platform)}",
        f"# {CUTOFF_KEY}: {format_cutoff(cutoff)}",
        f"# channels: {' '.join(spec.channels)}",
        # What the pip part must agree with (pack/agree.py); read back by `--only pip` and `check`.
        f"# {PYTHON_PACKAGES_KEY}: {' '.join(f'{n}=={v}' for n, v in sorted(pins.items())) or '-'}",
        f"# platform: {platform}",
        "@EXPLICIT",
    ]
    lines += [f"{r.url}#{_hex(r.sha256)}" for r in records]
    log.info("lock: the conda part has %d packages", len(records))
    return ("\n".join(lines) + "\n").encode(), pins


def _hex(sha: bytes | str) -> str:
    return sha.hex() if isinstance(sha, bytes) else str(sha)


def recorded_conda_pins(conda_lock: Path) -> dict[str, str]:
    """The Python packages a conda lock says it installs; {} without a conda lock (logged)."""
    if not conda_lock.is_file():
        log.warning("lock: no %s: the pip part is locked without the conda part's versions, so their "
                    "agreement is not checked (env/README.md)", conda_lock)
        return {}
    value = read_header(conda_lock).get(PYTHON_PACKAGES_KEY)
    if value is None:
        raise PackError("lock", f"{conda_lock} records no '{PYTHON_PACKAGES_KEY}' line",
                        "regenerate it with `just lock`")
    return dict(item.split("==", 1) for item in value.split() if "==" in item)


# -- pip ----------------------------------------------------------------------------------------------

def _overrides(out: Path) -> Path | None:
    path = out / OVERRIDES
    return path if path.is_file() else None


def _uv() -> str:
    # uv ships in the venv beside this interpreter, which may not be on PATH.
    uv = shutil.which("uv") or shutil.which("uv", path=str(Path(sys.executable).parent))
    if uv is None:
        raise PackError("lock", "uv is not on PATH",
                        "install requirements/dev.txt (./dev) or `pip install uv`")
    return uv


def compile_pip(spec: Spec, platform: str, overrides: Path | None, conda_pins: dict[str, str],
                cutoff: datetime.datetime) -> tuple[bytes | None, str]:
    """(uv's lock, None on failure; uv's last lines). Inputs are copied under fixed names into a temp
    dir and uv runs there: what it writes ("# via -r requirements.in") does not depend on paths."""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "requirements.in").write_text("\n".join([*spec.pip_options, *spec.pip]) + "\n")
        cmd = [_uv(), "pip", "compile", "--quiet", "--no-config", "--generate-hashes", "--no-header",
               "--python-platform", pip_platform(platform), "--python-version", spec.python,
               "--exclude-newer", format_cutoff(cutoff), "requirements.in", "-o", "requirements.lock"]
        if not any(opt.split()[0].split("=")[0] in INDEX_OPTIONS for opt in spec.pip_options):
            cmd += ["--index-url", "https://pypi.org/simple"]
        if overrides is not None:
            shutil.copyfile(overrides, work / OVERRIDES)
            cmd += ["--override", OVERRIDES]
        if conda_pins:
            (work / "conda.txt").write_text("".join(f"{n}=={v}\n" for n, v in sorted(conda_pins.items())))
            cmd += ["--constraint", "conda.txt"]
        proc = subprocess.run(cmd, cwd=work, capture_output=True, text=True, check=False)
        tail = " | ".join(proc.stderr.strip().splitlines()[-8:])
        if proc.returncode != 0:
            return None, tail
        return (work / "requirements.lock").read_bytes(), tail


def pip_lock_text(spec: Spec, platform: str, overrides: Path | None, conda_pins: dict[str, str],
                  cutoff: datetime.datetime) -> bytes:
    """The hashed pip lock's bytes, refused when it disagrees with conda's Python packages."""
    log.info("lock: compiling the pip part with uv for Python %s, %s, nothing newer than %s%s",
             spec.python, pip_platform(platform), format_cutoff(cutoff),
             f"; conda installs {', '.join(f'{n}=={v}' for n, v in sorted(conda_pins.items()))}"
             if conda_pins else "")
    body, tail = compile_pip(spec, platform, overrides, conda_pins, cutoff)
    if body is None and conda_pins:
        # Maybe conda's versions are what made it unsolvable: if the pip part solves without them, say
        # which packages the two parts disagree on instead of uv's conflict report.
        free, _ = compile_pip(spec, platform, overrides, {}, cutoff)
        if free is not None:
            agree.refuse(agree.disagreements(conda_pins, agree.pip_pins(free.decode())), "lock",
                         "the pip part needs other versions than conda installs: pin them in the spec's "
                         "pip section to conda's versions, or move them to its conda dependencies")
    if body is None:
        raise PackError("lock", f"uv could not resolve the pip part: {tail}",
                        "adjust the spec or the overrides")
    # An override can still force another version than the constraint allows.
    agree.refuse(agree.disagreements(conda_pins, agree.pip_pins(body.decode())), "lock",
                 "pin them to conda's versions in the spec's pip section or in pip-overrides.txt")
    header = (
        f"# Generated by `python -m pack lock` from {spec.path.name} (the pip part). Do not edit.\n"
        f"# {DIGEST_KEY}: {spec.pip_digest(platform, _read(overrides), conda_pins)}\n"
        f"# {CUTOFF_KEY}: {format_cutoff(cutoff)}\n"
        f"# uv pip compile --generate-hashes --python-platform {pip_platform(platform)} "
        f"--python-version {spec.python}" + (f" --override {OVERRIDES}" if overrides else "")
        + (" --constraint <conda's python-packages>" if conda_pins else "") + "\n"
        "# Installed with the env's pip: --no-deps --require-hashes.\n"
    )
    return header.encode() + body


def _read(path: Path | None) -> str | None:
    return path.read_text() if path is not None else None


# -- freshness ----------------------------------------------------------------------------------------

def read_header(path: Path) -> dict[str, str]:
    """The ``# key: value`` lines at the top of a lock."""
    header: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        key, sep, value = line[1:].strip().partition(": ")
        if sep and " " not in key:
            header[key] = value.strip()
    return header


@dataclass(frozen=True)
class Finding:
    path: Path
    ok: bool
    detail: str


def check(spec_path: Path, out: Path, platform: str = "linux-64", only: str | None = None,
          resolve: bool = False) -> list[Finding]:
    """Whether each lock in ``out`` was made from the spec as it is now (offline: recorded digests);
    with ``resolve``, also whether solving again at the recorded cutoff gives the same bytes."""
    spec = read_spec(spec_path)
    findings: list[Finding] = []
    conda_path, pip_path = out / conda_lock_name(platform), out / PIP_LOCK
    parts = [p for p in ("conda", "pip") if only in (None, p) and (p == "conda" or spec.pip)]
    for part in parts:
        path = conda_path if part == "conda" else pip_path
        if not path.is_file():
            where = " where conda-forge is reachable (the lock workflow)" if part == "conda" else ""
            findings.append(Finding(path, False, f"missing: run `just lock --only {part}`{where}"))
            continue
        header = read_header(path)
        want = (spec.conda_digest(platform) if part == "conda"
                else spec.pip_digest(platform, _read(_overrides(out)), _pins_or_empty(conda_path)))
        got = header.get(DIGEST_KEY)
        if got != want:
            findings.append(Finding(path, False, f"stale: made from spec inputs {(got or 'unrecorded')[:12]},"
                                    f" the spec is now {want[:12]}: run `just lock --only {part}`"))
            continue
        findings.append(Finding(path, True, f"made from the current spec ({want[:12]}), "
                                f"cutoff {header.get(CUTOFF_KEY, '?')}"))
    if resolve and all(f.ok for f in findings):
        findings = [_resolve_again(spec_path, out, platform, f) for f in findings]
    return findings


def _pins_or_empty(conda_lock: Path) -> dict[str, str]:
    return recorded_conda_pins(conda_lock) if conda_lock.is_file() else {}


def _resolve_again(spec_path: Path, out: Path, platform: str, finding: Finding) -> Finding:
    part = "conda" if finding.path.name == conda_lock_name(platform) else "pip"
    cutoff = read_header(finding.path)[CUTOFF_KEY]
    with tempfile.TemporaryDirectory() as tmp:
        again = Path(tmp)
        # The pip part is solved with the same overrides and against the same conda part.
        for name in (OVERRIDES, conda_lock_name(platform)) if part == "pip" else ():
            if (out / name).is_file():
                shutil.copyfile(out / name, again / name)
        [path] = lock(spec_path, again, platform, part, cutoff)
        if path.read_bytes() == finding.path.read_bytes():
            return Finding(finding.path, True,
                           f"{finding.detail}; solving again at that cutoff gives the same bytes")
        old, new = _lines(finding.path), _lines(path)
        changed = sorted((old - new) | (new - old))[:6]
        return Finding(finding.path, False, f"solving again at cutoff {cutoff} gives other bytes "
                       f"({'; '.join(changed)}): the registries changed what they serve for that date; "
                       "run the lock workflow to lock anew")


def _lines(path: Path) -> set[str]:
    return {ln.strip() for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")}
