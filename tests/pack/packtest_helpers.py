"""Helpers for tests/pack: a small real wheel (zipfile + the wheel spec), its hashed pip lock, options."""

from __future__ import annotations

import base64
import hashlib
import zipfile
from dataclasses import dataclass
from pathlib import Path

from pack.build import BuildResult
from pack.options import PackOptions

NAME, VERSION = "tinypkg", "1.0.0"


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def build_wheel(dest: Path, name: str = NAME, version: str = VERSION, package: str | None = None) -> Path:
    """A pure-Python wheel of ``name`` ``version``: its package (``package``, default the name) prints
    where it runs from; ``tinycmd`` is its console script."""
    package = package or name.replace("-", "_")
    dist = name.replace("-", "_")
    info = f"{dist}-{version}.dist-info"
    files = {
        f"{package}/__init__.py": b"import sys\n\n\ndef main():\n    print('tinypkg in', sys.prefix)\n",
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        f"{info}/entry_points.txt": f"[console_scripts]\ntinycmd = {package}:main\n".encode(),
    }
    record = "".join(f"{path},{_record_hash(data)},{len(data)}\n" for path, data in files.items())
    record += f"{info}/RECORD,,\n"
    dest.mkdir(parents=True, exist_ok=True)
    wheel = dest / f"{dist}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for path, data in [*files.items(), (f"{info}/RECORD", record.encode())]:
            zinfo = zipfile.ZipInfo(path, date_time=(2020, 1, 1, 0, 0, 0))
            zinfo.external_attr = 0o644 << 16
            zf.writestr(zinfo, data)
    return wheel


def pip_lock_for(wheel: Path, dest: Path, sha256: str | None = None) -> Path:
    name, version = wheel.name.split("-")[:2]
    digest = sha256 or hashlib.sha256(wheel.read_bytes()).hexdigest()
    dest.write_text(f"{name.replace('_', '-')}=={version} \\\n    --hash=sha256:{digest}\n")
    return dest


PART_SIZE = 4 << 20  # ~26 MB at level 3: several parts


@dataclass(frozen=True)
class Packed:
    result: BuildResult
    options: PackOptions


def options_for(work: Path, out: Path, **kw: object) -> PackOptions:
    base: dict[str, object] = dict(out=out, work=work, name="example", level=3, part_size=PART_SIZE)
    base.update(kw)
    return PackOptions(**base)  # type: ignore[arg-type]
