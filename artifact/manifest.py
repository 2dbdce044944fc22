"""The artifact contract: ``manifest.json``, format 1.

One stdlib-only module that every side imports: ``pack`` writes manifests with it, the bootstrap
(which runs in the slim image) reads them with it. Keep it free of third-party imports.

Format 1 (required fields; readers ignore unknown fields and refuse an unknown ``format``)::

    {"format": 1,
     "env_id": "<hex: input address of the env: lock digests + pack options + platform>",
     "archive": {"compression": "zstd", "size": <int>, "sha256": "<hex of the whole compressed stream>"},
     "parts": [{"name": "<file name relative to the manifest URL>", "size": <int>, "sha256": "<hex>"}]}

The archive is one tar stream compressed with zstd; the parts, concatenated in order, are that stream.

Optional fields written by ``pack`` (all readers must treat them as optional):
``name``, ``platform`` (e.g. ``linux-64``), ``prefix`` (the path the env was built at),
``relocatable`` (true: ``bin/conda-unpack`` inside, installs anywhere; false: built for ``dest_prefix``),
``dest_prefix`` (the only path a non-relocatable artifact may be installed at), ``unpacked_size``
(bytes of regular files once extracted), ``file_count``, ``created`` (SOURCE_DATE_EPOCH),
``tools`` (name -> version of what built it), ``locks`` (lock file name -> sha256), ``pack_options``.
"""

from __future__ import annotations

import json
import re
import reprlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FORMAT = 1
MANIFEST_NAME = "manifest.json"
COMPRESSION = "zstd"
# GitHub refuses release assets of 2 GiB and more (exactly 2 GiB is reported to fail).
GITHUB_ASSET_LIMIT = 2 * 1024**3
_MAX_ISSUES = 20  # listed in one error; the rest are counted

_HEX64 = re.compile(r"[0-9a-f]{64}")
_HEX = re.compile(r"[0-9a-f]{16,128}")
# Part names are plain file names next to the manifest: no directories, no dot-files, no escapes.
_PART_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,200}")


class ManifestError(ValueError):
    """The manifest is unreadable, of an unknown format, or inconsistent. The message lists every issue."""


# Values quoted in messages: bounded in length and depth (a hostile manifest must not make a 10 MB
# error line, or one that recursion cannot print).
_QUOTE = reprlib.Repr()
_QUOTE.maxlevel, _QUOTE.maxstring, _QUOTE.maxother, _QUOTE.maxlist, _QUOTE.maxdict = 2, 80, 80, 4, 4


def quote(value: Any) -> str:
    return _QUOTE.repr(value)


@dataclass(frozen=True)
class Part:
    name: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Archive:
    compression: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    env_id: str
    archive: Archive
    parts: tuple[Part, ...]
    # Every optional or unknown top-level field, kept verbatim so a reader can round-trip it.
    extra: Mapping[str, Any] = field(default_factory=dict)

    # -- typed views of the optional fields the installer relies on ------------------------------
    @property
    def name(self) -> str | None:
        return _opt(self.extra, "name", str)

    @property
    def platform(self) -> str | None:
        return _opt(self.extra, "platform", str)

    @property
    def prefix(self) -> str | None:
        return _opt(self.extra, "prefix", str)

    @property
    def dest_prefix(self) -> str | None:
        return _opt(self.extra, "dest_prefix", str)

    @property
    def relocatable(self) -> bool:
        # An archive without conda-unpack is valid (nothing to relocate); only an explicit
        # dest_prefix pins the install location.
        return self.dest_prefix is None

    @property
    def unpacked_size(self) -> int | None:
        return _opt(self.extra, "unpacked_size", int)

    @property
    def file_count(self) -> int | None:
        return _opt(self.extra, "file_count", int)

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = dict(self.extra)
        doc.update(
            format=FORMAT,
            env_id=self.env_id,
            archive={"compression": self.archive.compression, "size": self.archive.size,
                     "sha256": self.archive.sha256},
            parts=[{"name": p.name, "size": p.size, "sha256": p.sha256} for p in self.parts],
        )
        return doc

    def to_json(self) -> str:
        """Canonical text: sorted keys, two-space indent, trailing newline (byte-stable for equal input)."""
        return json.dumps(self.to_dict(), sort_keys=True, indent=2, ensure_ascii=True) + "\n"


def _opt(extra: Mapping[str, Any], key: str, kind: type) -> Any:
    value = extra.get(key)
    if value is None:
        return None
    if kind is int and isinstance(value, bool):
        return None
    return value if isinstance(value, kind) else None


def make_manifest(env_id: str, archive: Archive, parts: Iterable[Part], **extra: Any) -> Manifest:
    """Build a manifest and validate it exactly as a reader would."""
    manifest = Manifest(env_id=env_id, archive=archive, parts=tuple(parts), extra=dict(extra))
    return parse_manifest(manifest.to_json())


def parse_manifest(data: bytes | str) -> Manifest:
    """Parse and validate manifest text. Collects every issue before raising one ManifestError."""
    try:
        doc = json.loads(data)
    except ValueError as exc:  # not JSON, not UTF-8, or an integer past Python's 4300-digit limit
        raise ManifestError(f"manifest is not valid JSON: {exc}") from None
    except RecursionError:
        # json nests one C stack frame per level: "[" * 100000 exhausts it. No manifest nests.
        raise ManifestError("manifest is not a manifest: its JSON nests deeper than the parser can "
                            "follow") from None
    if not isinstance(doc, dict):
        raise ManifestError("manifest must be a JSON object")
    fmt = doc.get("format")
    if fmt != FORMAT or isinstance(fmt, bool):
        raise ManifestError(
            f"unknown manifest format {quote(fmt)}: this installer reads format {FORMAT}; "
            "use an installer built for that artifact"
        )

    issues: list[str] = []
    env_id = doc.get("env_id")
    if not (isinstance(env_id, str) and _HEX.fullmatch(env_id)):
        issues.append(f"env_id must be 16-128 lowercase hex characters, got {quote(env_id)}")

    archive = _parse_archive(doc.get("archive"), issues)
    parts = _parse_parts(doc.get("parts"), issues)
    if archive is not None and parts and not issues:
        total = sum(p.size for p in parts)
        if total != archive.size:
            issues.append(f"parts add up to {total} bytes but archive.size is {archive.size}")
    for key in ("unpacked_size", "file_count"):
        if key in doc and not _is_count(doc[key]):
            issues.append(f"{key} must be a non-negative integer, got {quote(doc[key])}")
    for key in ("prefix", "dest_prefix"):
        if doc.get(key) is not None and not (isinstance(doc[key], str) and doc[key].startswith("/")):
            issues.append(f"{key} must be an absolute path, got {quote(doc[key])}")
    if issues:
        shown = issues[:_MAX_ISSUES] + ([f"and {len(issues) - _MAX_ISSUES} more"]
                                        if len(issues) > _MAX_ISSUES else [])
        raise ManifestError("invalid manifest: " + "; ".join(shown))

    extra = {k: v for k, v in doc.items() if k not in ("format", "env_id", "archive", "parts")}
    assert archive is not None and isinstance(env_id, str)
    return Manifest(env_id=env_id, archive=archive, parts=tuple(parts), extra=extra)


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _parse_archive(raw: Any, issues: list[str]) -> Archive | None:
    if not isinstance(raw, dict):
        issues.append("archive must be an object with compression, size and sha256")
        return None
    ok = True
    if raw.get("compression") != COMPRESSION:
        issues.append(f"archive.compression must be {COMPRESSION!r}, got {quote(raw.get('compression'))}")
        ok = False
    if not _is_count(raw.get("size")):
        issues.append(f"archive.size must be a non-negative integer, got {quote(raw.get('size'))}")
        ok = False
    if not (isinstance(raw.get("sha256"), str) and _HEX64.fullmatch(raw["sha256"])):
        issues.append(f"archive.sha256 must be 64 lowercase hex characters, "
                      f"got {quote(raw.get('sha256'))}")
        ok = False
    return Archive(raw["compression"], raw["size"], raw["sha256"]) if ok else None


def _parse_parts(raw: Any, issues: list[str]) -> list[Part]:
    if not isinstance(raw, list) or not raw:
        issues.append("parts must be a non-empty list")
        return []
    parts: list[Part] = []
    seen: set[str] = set()
    for i, item in enumerate(raw):
        where = f"parts[{i}]"
        if not isinstance(item, dict):
            issues.append(f"{where} must be an object")
            continue
        name, size, digest = item.get("name"), item.get("size"), item.get("sha256")
        bad = False
        if not (isinstance(name, str) and _PART_NAME.fullmatch(name) and ".." not in name):
            issues.append(f"{where}.name must be a plain file name (no '/', no '..'), got {quote(name)}")
            bad = True
        elif name in seen:
            issues.append(f"{where}.name {quote(name)} is used twice")
            bad = True
        elif name == MANIFEST_NAME:
            issues.append(f"{where}.name may not be {MANIFEST_NAME!r}")
            bad = True
        if not _is_count(size):
            issues.append(f"{where}.size must be a non-negative integer, got {quote(size)}")
            bad = True
        elif size >= GITHUB_ASSET_LIMIT:
            issues.append(f"{where}.size {size} is not below the 2 GiB release-asset limit")
            bad = True
        if not (isinstance(digest, str) and _HEX64.fullmatch(digest)):
            issues.append(f"{where}.sha256 must be 64 lowercase hex characters, got {quote(digest)}")
            bad = True
        if not bad:
            seen.add(name)
            parts.append(Part(name, size, digest))
    return parts


def read_manifest(path: str | Path) -> Manifest:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ManifestError(f"could not read manifest {path}: {exc.strerror or exc}") from None
    return parse_manifest(data)

