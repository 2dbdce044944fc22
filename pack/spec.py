"""The lock's input: an environment.yml read into one value, and the digest of what each part is solved from.

A lock records the digest of its own inputs (``# spec-sha256:``), so whether a lock is stale is a
question about files in the repository, answered offline, never a re-solve against today's registries.
The digest covers what the solver sees (channels, specs, platform, virtual packages; pip requirements,
pip options, Python version, overrides, and the versions conda installs that the pip part must agree
with), not the YAML's comments or layout.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import PackError

# What the conda solve may assume about the machine the env runs on (RunPod images: glibc >= 2.28).
VIRTUAL_PACKAGES = {"__unix": "0", "__linux": "5.4", "__glibc": "2.28", "__archspec": "1"}
PIP_PLATFORM = {"linux-64": "x86_64-manylinux_2_28", "linux-aarch64": "aarch64-manylinux_2_28"}
CUTOFF_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


@dataclass(frozen=True)
class Spec:
    path: Path
    channels: tuple[str, ...]
    conda: tuple[str, ...]  # conda match specs
    pip: tuple[str, ...]  # pip requirement lines
    pip_options: tuple[str, ...]  # pip option lines of the pip section (--index-url, --find-links...)

    @property
    def python(self) -> str:
        """The Python minor version the spec pins (the pip part is compiled for it)."""
        return python_version(self.conda)

    def conda_digest(self, platform: str) -> str:
        return _digest({
            "part": "conda",
            "channels": self.channels,
            "specs": self.conda,
            "platform": platform,
            "virtual_packages": VIRTUAL_PACKAGES,
        })

    def pip_digest(self, platform: str, overrides: str | None, conda_pins: dict[str, str]) -> str:
        return _digest({
            "part": "pip",
            "requirements": self.pip,
            "options": self.pip_options,
            "python": self.python,
            "platform": pip_platform(platform),
            "overrides": overrides,
            "conda": sorted(f"{name}=={version}" for name, version in conda_pins.items()),
        })


def read_spec(path: Path) -> Spec:
    """The spec's channels, conda specs and pip section (requirements and option lines)."""
    import yaml

    try:
        doc: dict[str, Any] = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise PackError("lock", f"could not read {path}: {exc}", "fix the YAML") from None
    channels = [str(c) for c in doc.get("channels") or []]
    conda: list[str] = []
    pip: list[str] = []
    options: list[str] = []
    for dep in doc.get("dependencies") or []:
        if isinstance(dep, dict) and "pip" in dep:
            for line in dep["pip"] or []:
                (options if str(line).lstrip().startswith("-") else pip).append(str(line).strip())
        elif isinstance(dep, str):
            conda.append(dep)
    if not channels or not conda:
        raise PackError("lock", f"{path} needs channels and conda dependencies", "see environment.yml")
    return Spec(path, tuple(channels), tuple(conda), tuple(pip), tuple(options))


def python_version(conda_specs: tuple[str, ...] | list[str]) -> str:
    for spec in conda_specs:
        if m := re.fullmatch(r"python\s*=+\s*(\d+\.\d+)(\.\*)?", spec.strip()):
            return m.group(1)
    raise PackError(
        "lock", "the spec must pin python to a minor version (python=3.11)", "add it to environment.yml"
    )


def pip_platform(platform: str) -> str:
    if platform not in PIP_PLATFORM:
        raise PackError("lock", f"no pip platform for {platform}", f"use one of {', '.join(PIP_PLATFORM)}")
    return PIP_PLATFORM[platform]


def parse_cutoff(text: str | None, now: datetime.datetime | None = None) -> datetime.datetime:
    """The cutoff as an aware UTC datetime: a date (its midnight, UTC) or an RFC 3339 time.

    No value means the start of today (UTC): two locks made the same day from the same spec agree.
    """
    if text is None:
        now = now or datetime.datetime.now(datetime.UTC)
        return now.astimezone(datetime.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    raw = text.strip()
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", raw):
            value = datetime.datetime.fromisoformat(raw).replace(tzinfo=datetime.UTC)
        else:
            value = datetime.datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        value = None
    if value is None or value.tzinfo is None:
        raise PackError(
            "lock",
            f"--exclude-newer {text!r} is not a date (2026-12-01) or a UTC time (2026-12-01T00:00:00Z)",
            "give the cutoff as YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ",
        )
    return value.astimezone(datetime.UTC).replace(microsecond=0)


def format_cutoff(cutoff: datetime.datetime) -> str:
    return cutoff.astimezone(datetime.UTC).strftime(CUTOFF_FORMAT)


def _digest(doc: dict[str, object]) -> str:
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()
