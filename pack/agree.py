"""conda and pip agree: the pip part never replaces a Python distribution that the conda part installs.

conda-forge's ``pip`` depends on setuptools and wheel (wheel on packaging); a pip lock that pins other
versions of them makes pip uninstall conda's files and install its own, and conda-pack then refuses the
env ("files managed by conda were overwritten"). So a package both sides name is pinned to conda's
version in the pip part (pip then finds it installed and leaves it) or left to conda.

Checked twice: when locking (by name: the conda packages that are Python packages, against the pip
lock's pins) and in ``pack build`` before pip runs (by the ``*.dist-info`` directories the conda
packages really installed, which also catches a conda package whose distribution has another name).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

from .errors import PackError
from .lockfile import logical_lines

_PIN = re.compile(r"([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;\\]+)")
_DIST_INFO = re.compile(r"lib/python3\.\d+/site-packages/([^/]+)-([^/-]+)\.dist-info/METADATA")


def normalize(name: str) -> str:
    """PEP 503 name normalization (conda-forge names Python packages after their PyPI name)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def conda_python_pins(records: Iterable[object]) -> dict[str, str]:
    """Name -> version of the solved conda packages that are Python packages (noarch: python, or built
    against python), the interpreter itself excluded."""
    pins: dict[str, str] = {}
    for record in records:
        name = record.name.normalized  # type: ignore[attr-defined]
        depends = [d.split()[0] for d in record.depends]  # type: ignore[attr-defined]
        is_python = record.noarch.python or "python" in depends or "python_abi" in depends  # type: ignore[attr-defined]
        if is_python and name != "python":
            pins[normalize(name)] = str(record.version)  # type: ignore[attr-defined]
    return pins


def pip_pins(lock_text: str) -> dict[str, str]:
    """Name -> version of every ``name==version`` line of a pip lock."""
    pins: dict[str, str] = {}
    for line in logical_lines(lock_text):
        if m := _PIN.match(line):
            pins[normalize(m.group(1))] = m.group(2)
    return pins


def disagreements(conda: Mapping[str, str], pip: Mapping[str, str], owners: Mapping[str, str] | None = None
                  ) -> list[str]:
    """One line per package that pip would install at another version than conda's."""
    lines = []
    for name in sorted(set(conda) & set(pip)):
        if conda[name] != pip[name]:
            owner = f" (conda package {owners[name]})" if owners and owners.get(name, name) != name else ""
            lines.append(f"{name}: conda installs {conda[name]}{owner}, the pip lock pins {pip[name]}")
    return lines


def refuse(lines: list[str], phase: str, remedy: str) -> None:
    if lines:
        raise PackError(phase, "pip would replace files the conda part installs: " + "; ".join(lines), remedy)


def installed_by_conda(prefix: Path) -> tuple[dict[str, str], dict[str, str]]:
    """(name -> version, name -> conda package) of the Python distributions conda installed in prefix."""
    versions: dict[str, str] = {}
    owners: dict[str, str] = {}
    for record in sorted((prefix / "conda-meta").glob("*.json")):
        meta = json.loads(record.read_text())
        for rel in meta.get("files", []):
            if m := _DIST_INFO.fullmatch(rel):
                name = normalize(m.group(1))
                versions[name] = m.group(2)
                owners[name] = str(meta.get("name"))
    return versions, owners


def check_prefix(prefix: Path, pip_lock: Path) -> None:
    """Refuse, before pip runs, a pip lock that would replace a distribution conda installed in prefix."""
    versions, owners = installed_by_conda(prefix)
    refuse(
        disagreements(versions, pip_pins(pip_lock.read_text()), owners),
        "pip",
        "pin those packages to conda's versions in the pip lock, or leave them to conda "
        "(`just lock` does this when it locks both parts together)",
    )
