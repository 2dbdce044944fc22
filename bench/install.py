"""Benchmark of the installer (issue 3), recorded in docs/BENCHMARKS.md under "## Install".

1. Cold install of a realistic artifact (a venv with the CPU torch wheel: >= 1 GB unpacked, tens of
   thousands of files) served by a local HTTP server with Range, against the shell pipeline
   ``curl parts | tee >(sha256sum) | zstd -d | tar -x`` on the same bytes. Both run side by side in one
   run, alternating, median of ``--repeat``; the figure is the ratio ours / pipeline.
2. Warm start (env present) to exec, for a tiny env and the big one: cost must be flat in env size.

    python bench/install.py --venv /tmp/b_bench/venv-torch --work /tmp/b_bench/work --repeat 5

The venv is made once with ``python3 -m venv V && V/bin/pip install /opt/wheels/torch-*.whl``. Its
``bin/python*`` links point outside the tree (a venv's do), so the artifact replaces them with a
small shell script, as a conda env would hold a real interpreter there. Everything under ``--work``
is deleted at the end unless ``--keep``.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import shutil
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from artifact.manifest import Archive, Part, make_manifest  # noqa: E402
from devtools import child_env  # noqa: E402
from devtools.release_server import ReleaseServer  # noqa: E402

SHIM = b"#!/bin/sh\nexit 0\n"
PART_SIZE = 128 * 1024 * 1024


def build_artifact(venv: Path, out: Path, level: int = 3) -> dict:
    """tar (python tarfile, sorted, fixed mtimes kept) -> zstd -> parts + manifest.json."""
    import zstandard

    out.mkdir(parents=True, exist_ok=True)
    raw = out / "env.tar.zst"
    files = unpacked = 0
    cctx = zstandard.ZstdCompressor(level=level, threads=2)
    with open(raw, "wb") as fh, cctx.stream_writer(fh, closefd=False) as zw:
        with tarfile.open(fileobj=zw, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            for path in sorted(venv.rglob("*")):
                rel = path.relative_to(venv).as_posix()
                if rel.startswith("bin/python"):
                    info = tarfile.TarInfo(rel)
                    info.size, info.mode, info.mtime = len(SHIM), 0o755, 1_700_000_000
                    tar.addfile(info, io.BytesIO(SHIM))
                    files += 1
                    continue
                # As pack/ writes them: integer mtime, uid 0, 0755/0644 (PAX only for long names).
                info = tar.gettarinfo(str(path), arcname=rel)
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                info.mtime = 1_700_000_000
                if info.isreg():
                    info.mode = 0o755 if info.mode & 0o100 else 0o644
                elif info.isdir():
                    info.mode = 0o755
                if info.isreg():
                    with open(path, "rb") as src:
                        tar.addfile(info, src)
                    files += 1
                    unpacked += info.size
                else:
                    tar.addfile(info)
    data_size = raw.stat().st_size
    parts, digest = [], hashlib.sha256()
    with open(raw, "rb") as fh:
        i = 0
        while chunk := fh.read(PART_SIZE):
            name = f"env.tar.zst.{i:03d}"
            (out / name).write_bytes(chunk)
            digest.update(chunk)
            parts.append(Part(name, len(chunk), hashlib.sha256(chunk).hexdigest()))
            i += 1
    raw.unlink()
    manifest = make_manifest(hashlib.sha256(str(venv).encode()).hexdigest()[:32],
                             Archive("zstd", data_size, digest.hexdigest()), parts, name="bench-torch-venv",
                             unpacked_size=unpacked, file_count=files)
    (out / "manifest.json").write_text(manifest.to_json())
    return {"files": files, "unpacked": unpacked, "archive": data_size, "parts": len(parts)}


def tiny_artifact(out: Path) -> None:
    import zstandard

    out.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in (("bin/python", SHIM), ("etc/readme", b"tiny\n")):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o755
            tar.addfile(info, io.BytesIO(data))
    data = zstandard.ZstdCompressor(level=3).compress(buf.getvalue())
    (out / "env.tar.zst.000").write_bytes(data)
    sha = hashlib.sha256(data).hexdigest()
    manifest = make_manifest("0123456789abcdef" * 2, Archive("zstd", len(data), sha),
                             [Part("env.tar.zst.000", len(data), sha)], name="bench-tiny")
    (out / "manifest.json").write_text(manifest.to_json())


def serve(root: Path) -> tuple[ReleaseServer, str]:
    server = ReleaseServer(root).start()
    return server, server.base_url


def run_ours(url: str, volume: Path) -> float:
    volume.mkdir(parents=True)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "worker.bootstrap", "--manifest-url", f"{url}/manifest.json",
                           "--volume", str(volume), "--no-exec", "--placement", "volume"],
                          capture_output=True, text=True, env=child_env())
    took = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"installer failed:\n{proc.stderr[-3000:]}")
    return took


def run_pipeline(url: str, parts: list[str], dest: Path) -> float:
    dest.mkdir(parents=True)
    urls = " ".join(f"{url}/{p}" for p in parts)
    cmd = f"curl -sf {urls} | tee >(sha256sum > {dest}.sha256) | zstd -dq | tar -x -C {dest}"
    t0 = time.perf_counter()
    subprocess.run(["bash", "-o", "pipefail", "-c", cmd], check=True)
    return time.perf_counter() - t0


def warm_start(url: str, volume: Path, repeat: int) -> float:
    """Seconds from process start to exec of the env's bin/python (a shim that exits), median."""
    args = [sys.executable, "-m", "worker.bootstrap", "--manifest-url", f"{url}/manifest.json",
            "--volume", str(volume), "--placement", "volume"]
    sha = hashlib.sha256(subprocess.run(["curl", "-sf", f"{url}/manifest.json"], capture_output=True,
                                        check=True).stdout).hexdigest()
    subprocess.run([*args, "--no-exec", "--manifest-sha256", sha], check=True, capture_output=True,
                   env=child_env())
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        subprocess.run([*args, "--manifest-sha256", sha], check=True, capture_output=True, env=child_env())
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--venv", type=Path, required=True)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--warm-only", action="store_true", help="skip the cold-install comparison")
    args = ap.parse_args()
    work = args.work
    art, tiny = work / "artifact", work / "tiny"
    if not (art / "manifest.json").exists():
        t0 = time.perf_counter()
        info = build_artifact(args.venv, art)
        print(f"artifact: {info} built in {time.perf_counter() - t0:.0f} s", flush=True)
    tiny_artifact(tiny)
    manifest = json.loads((art / "manifest.json").read_text())
    parts = [p["name"] for p in manifest["parts"]]
    print(f"archive {manifest['archive']['size'] / 1e6:.0f} MB in {len(parts)} parts, "
          f"{manifest['unpacked_size'] / 1e9:.2f} GB unpacked, {manifest['file_count']} files", flush=True)
    httpd, url = serve(art)
    httpd_tiny, url_tiny = serve(tiny)
    ours, pipe = [], []
    try:
        for i in range(0 if args.warm_only else args.repeat):
            order = [("ours", run_ours), ("pipe", run_pipeline)] if i % 2 == 0 else \
                [("pipe", run_pipeline), ("ours", run_ours)]
            for name, _fn in order:
                dest = work / f"run-{name}-{i}"
                subprocess.run(["sync"], check=True)
                took = run_ours(url, dest) if name == "ours" else run_pipeline(url, parts, dest)
                (ours if name == "ours" else pipe).append(took)
                shutil.rmtree(dest, ignore_errors=True)
                Path(f"{dest}.sha256").unlink(missing_ok=True)
            print(f"round {i + 1}: ours {ours[-1]:.2f} s, pipeline {pipe[-1]:.2f} s", flush=True)
        big_vol, tiny_vol = work / "warm-big", work / "warm-tiny"
        shutil.rmtree(big_vol, ignore_errors=True)
        shutil.rmtree(tiny_vol, ignore_errors=True)
        run_ours(url, big_vol)
        tiny_vol.mkdir()
        warm_big = warm_start(url, big_vol, args.repeat * 2)
        warm_tiny = warm_start(url_tiny, tiny_vol, args.repeat * 2)
    finally:
        httpd.close()
        httpd_tiny.close()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(f"warm start to exec: big env {warm_big:.3f} s, tiny env {warm_tiny:.3f} s "
          f"(median of {args.repeat * 2})")
    if args.warm_only:
        return
    m_ours, m_pipe = statistics.median(ours), statistics.median(pipe)
    print(f"cold install: ours median {m_ours:.2f} s, pipeline median {m_pipe:.2f} s, "
          f"ratio {m_ours / m_pipe:.2f}x (all: ours {[round(x, 2) for x in ours]}, "
          f"pipeline {[round(x, 2) for x in pipe]})")


if __name__ == "__main__":
    main()
