"""Measure what each layer of the slim image adds, without a Docker engine (docs/image.md).

    python bench/image.py [--skip-runpod] [--json]

Reproduces each layer the Dockerfile adds on top of the base image in a temp dir and measures it the
way a registry stores it: the files as one tar stream (uncompressed bytes) and that stream through
gzip -6 (a registry layer) and zstd -3. Layers: the zstd Debian package (apt-get download, when apt is
there), the zstandard wheel from requirements/image.txt with its cffi backend removed, the worker code
that .dockerignore lets through, its byte-compiled .pyc files; and, for the decision recorded in
docs/image.md, the runpod SDK with its whole dependency tree. Needs PyPI (pip download); prints a table,
or one JSON object with --json.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import zstandard

ROOT = Path(__file__).resolve().parent.parent
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "linux_x86_64"]


def layer_sizes(directory: Path) -> dict[str, int]:
    """Bytes of `directory` as one tar stream, and gzip -6 / zstd -3 of that stream."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(directory.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(directory)), recursive=False)
    raw = buf.getvalue()
    return {"tar": len(raw), "gzip6": len(gzip.compress(raw, 6)),
            "zstd3": len(zstandard.ZstdCompressor(level=3).compress(raw)),
            "files": sum(1 for p in directory.rglob("*") if p.is_file())}


def pip_target(dest: Path, *args: str) -> None:
    platform_args = [a for p in PLATFORMS for a in ("--platform", p)]
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check",
                    "--no-warn-conflicts", "--no-compile", "--target", str(dest), "--only-binary=:all:",
                    "--python-version", "3.11", "--implementation", "cp", *platform_args, *args], check=True)


def zstandard_layer(work: Path) -> dict[str, int]:
    dest = work / "zstandard"
    pip_target(dest, "--require-hashes", "-r", str(ROOT / "requirements" / "image.txt"))
    for path in [*dest.glob("zstandard/_cffi.*.so"), dest / "zstandard" / "backend_cffi.py"]:
        path.unlink(missing_ok=True)
    return layer_sizes(dest)


def apt_zstd_layer(work: Path) -> dict[str, int] | None:
    if not shutil.which("apt-get") or not shutil.which("dpkg-deb"):
        return None
    dest = work / "apt"
    dest.mkdir()
    proc = subprocess.run(["apt-get", "download", "zstd=1.5.4+dfsg2-5"], cwd=dest, capture_output=True)
    debs = list(dest.glob("zstd_*.deb"))
    if proc.returncode or not debs:
        return None
    root = work / "apt-root"
    subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(root)], check=True)
    return layer_sizes(root)


def worker_layers(work: Path) -> tuple[dict[str, int], dict[str, int]]:
    files = subprocess.run(["git", "-C", str(ROOT), "ls-files", "--cached", "--others", "--exclude-standard",
                            "artifact", "worker"], capture_output=True, text=True, check=True).stdout.split()
    app = work / "app"
    for rel in files:
        if "__pycache__" in rel or rel.endswith(".pyc") or not (ROOT / rel).is_file():
            continue
        (app / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, app / rel)
    code = layer_sizes(app)
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(app / "artifact"), str(app / "worker")],
                   check=True)
    pyc = work / "pyc"
    for path in app.rglob("*.pyc"):
        (pyc / path.relative_to(app)).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, pyc / path.relative_to(app))
    return code, layer_sizes(pyc)


def runpod_tree(work: Path) -> dict[str, int]:
    dest = work / "runpod"
    pip_target(dest, "runpod")
    sizes = layer_sizes(dest)
    sizes["distributions"] = len(list(dest.glob("*.dist-info")))
    return sizes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-runpod", action="store_true", help="do not weigh the runpod SDK")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-image-") as tmp:
        work = Path(tmp)
        code, pyc = worker_layers(work)
        layers = {"apt zstd": apt_zstd_layer(work), "zstandard wheel": zstandard_layer(work),
                  "worker code": code, "worker .pyc": pyc}
        if not args.skip_runpod:
            layers["runpod SDK (not in image)"] = runpod_tree(work)
    if args.json:
        print(json.dumps(layers, sort_keys=True))
        return 0
    print(f"{'layer':28} {'files':>6} {'tar bytes':>12} {'gzip -6':>12} {'zstd -3':>12}")
    for name, s in layers.items():
        if s is None:
            print(f"{name:28} (not measured: no apt-get here)")
            continue
        print(f"{name:28} {s['files']:>6} {s['tar']:>12,} {s['gzip6']:>12,} {s['zstd3']:>12,}")
    added = [s for n, s in layers.items() if s and "not in image" not in n]
    print(f"{'added to the base image':28} {sum(s['files'] for s in added):>6} "
          f"{sum(s['tar'] for s in added):>12,} {sum(s['gzip6'] for s in added):>12,} "
          f"{sum(s['zstd3'] for s in added):>12,}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
