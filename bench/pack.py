"""Benchmark the pack formats side by side on one realistic env, in one run.

The env: the bundled example env plus the CPU torch wheel on this machine's disk, installed with the env's
own pip from a hashed lock (as a production pack installs its pip part). On that one env, measured in
this one run: our tar+zstd at each level offered (pack time, size / tar size, decode MB/s of tar output)
against conda-pack's own ``tar.gz`` (its default) and ``tar.zst`` writers. Decode speeds are the median
of --repeat runs; pack times the median where --repeat allows (the slow release level runs once
unless --repeat-slow is raised). Results print as a Markdown table and as JSON (last line).

    .venv/bin/python bench/pack.py [--work build/bench] [--repeat 3]
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import zstandard
from conda_pack.core import CondaEnv

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pack import example
from pack.archive import ZstdSettings, write_archive, write_tar
from pack.build import DEFAULT_SOURCE_DATE_EPOCH
from pack.collect import collect, load_env
from pack.create import create_conda_env, pip_install
from pack.lockfile import read_conda_lock
from pack.options import DEFAULT_PART_SIZE

log = logging.getLogger("bench.pack")
TORCH = sorted(Path("/opt/wheels").glob("torch-*+cpu-*.whl"))
# (label, level, window log): the levels `pack build --level/--long` is benchmarked at.
OURS = [("zstd-3", 3, 0), ("zstd-10 --long=27", 10, 27), ("zstd-19 --long=27 (release)", 19, 27)]
CHUNK = 1 << 20


class _Count:
    def __init__(self) -> None:
        self.size = 0

    def write(self, data: bytes) -> int:
        self.size += len(data)
        return len(data)


def _timed(fn: Callable[[], object], repeat: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def _drain(reader) -> int:
    total = 0
    while chunk := reader.read(CHUNK):
        total += len(chunk)
    return total


def decode_zstd(paths: list[Path]) -> int:
    class _Cat:
        def __init__(self) -> None:
            self.files = iter(paths)
            self.fh = open(next(self.files), "rb")

        def read(self, n: int = -1) -> bytes:
            while True:
                data = self.fh.read(n)
                if data:
                    return data
                self.fh.close()
                nxt = next(self.files, None)
                if nxt is None:
                    return b""
                self.fh = open(nxt, "rb")

    return _drain(zstandard.ZstdDecompressor(max_window_size=1 << 31).stream_reader(_Cat()))


def decode_gzip(path: Path) -> int:
    with gzip.open(path, "rb") as fh:
        return _drain(fh)


def make_env(work: Path) -> Path:
    if not TORCH:
        raise SystemExit("bench: no /opt/wheels/torch-*+cpu-*.whl on this machine")
    wheel = TORCH[0]
    lock = read_conda_lock(example.ensure_example_lock(work))
    prefix = work / "envs" / "bench-torch"
    create_conda_env(lock, prefix, work / "pkgs")
    pip_lock = work / "bench-requirements.lock"
    version = wheel.name.split("-")[1]
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    pip_lock.write_text(f"torch=={version} --hash=sha256:{digest}\n")
    pip_install(prefix, pip_lock, wheel.parent, DEFAULT_SOURCE_DATE_EPOCH)
    return prefix


def _cli_decode(cmd: list[str], path: Path) -> float:
    """CPU seconds (user + sys) of a C decoder writing to /dev/null."""
    with open(path, "rb") as src, open(os.devnull, "wb") as sink:
        proc = subprocess.Popen([*cmd, "-dc"], stdin=src, stdout=sink)
        _pid, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise SystemExit(f"bench: {cmd[0]} failed on {path}")
    return usage.ru_utime + usage.ru_stime


def _cpu(fn: Callable[[], int]) -> tuple[float, int]:
    start = time.process_time()
    n = fn()
    return time.process_time() - start, n


def run(work: Path, repeat: int, repeat_slow: int) -> dict[str, object]:
    prefix = make_env(work)
    entries = collect(load_env(prefix), None).entries
    counter = _Count()
    write_tar(entries, counter, DEFAULT_SOURCE_DATE_EPOCH)
    tar_bytes = counter.size
    rows: list[dict[str, object]] = []
    for label, level, window in OURS:
        out = work / "bench-out" / f"zstd-{level}-{window}"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        settings = ZstdSettings(level, 2, window)
        runs = repeat if level <= 3 else repeat_slow

        def pack(settings: ZstdSettings = settings, out: Path = out) -> object:
            for old in out.iterdir():
                old.unlink()
            return write_archive(
                entries, out, "bench.tar.zst", DEFAULT_PART_SIZE, settings, DEFAULT_SOURCE_DATE_EPOCH
            )

        pack_time, result = _timed(pack, runs)
        parts = [out / p.name for p in result.parts]  # type: ignore[attr-defined]
        size = result.size  # type: ignore[attr-defined]
        rows.append(
            dict(
                format=f"ours {label}",
                pack_s=pack_time,
                pack_runs=runs,
                size=size,
                files=parts,
                kind="zstd",
                long=window,
            )
        )
        log.info("bench: packed %s: %.1f s, %.3f of tar", label, pack_time, size / tar_bytes)
    env = CondaEnv.from_prefix(str(prefix))
    for fmt in ("tar.gz", "tar.zst"):
        target = work / f"conda-pack.{fmt}"
        target.unlink(missing_ok=True)
        pack_time, _ = _timed(
            lambda fmt=fmt, target=target: env.pack(output=str(target), format=fmt, force=True), 1
        )
        rows.append(
            dict(
                format=f"conda-pack {fmt} (defaults)",
                pack_s=pack_time,
                pack_runs=1,
                size=target.stat().st_size,
                files=[target],
                kind="gzip" if fmt == "tar.gz" else "zstd",
                long=0,
            )
        )
        log.info("bench: packed conda-pack %s: %.1f s", fmt, pack_time)
    # Decoding, in rotation so a busy neighbour slows every format alike; CPU time of the decoding
    # process (single-threaded decoders), median of `repeat` rounds.
    cli = {"zstd": shutil.which("zstd"), "gzip": shutil.which("gzip")}
    lib_cpu: dict[str, list[float]] = {str(r["format"]): [] for r in rows}
    out_bytes: dict[str, int] = {}
    cli_cpu: dict[str, list[float]] = {str(r["format"]): [] for r in rows}
    for _ in range(repeat):
        for r in rows:
            files: list[Path] = r["files"]  # type: ignore[assignment]
            if r["kind"] == "gzip":
                seconds, n = _cpu(lambda files=files: decode_gzip(files[0]))
            else:
                seconds, n = _cpu(lambda files=files: decode_zstd(files))
            # conda-pack writes its own tar (other headers): its decoded size is its own.
            assert n == tar_bytes or str(r["format"]).startswith("conda-pack"), (r["format"], n, tar_bytes)
            out_bytes[str(r["format"])] = n
            lib_cpu[str(r["format"])].append(seconds)
            tool = cli[str(r["kind"])]
            if tool and len(files) == 1:
                cmd = [tool, f"--long={r['long']}"] if r["kind"] == "zstd" and r["long"] else [tool]
                cli_cpu[str(r["format"])].append(_cli_decode(cmd, files[0]))
    for r in rows:
        r.pop("files")
        r["ratio"] = int(r["size"]) / tar_bytes  # type: ignore[call-overload]
        n = out_bytes[str(r["format"])]
        r["tar_out_bytes"] = n
        r["decode_mb_s"] = n / statistics.median(lib_cpu[str(r["format"])]) / 1e6
        times = cli_cpu[str(r["format"])]
        r["decode_cli_mb_s"] = n / statistics.median(times) / 1e6 if times else None
    base = next(r for r in rows if r["format"] == "conda-pack tar.gz (defaults)")
    for r in rows:
        r["decode_vs_gz"] = r["decode_mb_s"] / base["decode_mb_s"]  # type: ignore[operator]
        if r["decode_cli_mb_s"] and base["decode_cli_mb_s"]:
            r["decode_cli_vs_gz"] = r["decode_cli_mb_s"] / base["decode_cli_mb_s"]  # type: ignore[operator]
    return dict(
        env_files=len(entries), tar_bytes=tar_bytes, rows=rows, torch_wheel=TORCH[0].name, repeat=repeat
    )


def markdown(result: dict[str, object]) -> str:
    lines = [
        f"env: example env + {result['torch_wheel']} ({result['env_files']} members, tar "
        f"{result['tar_bytes'] / 1e6:.0f} MB); decode = CPU time, median of {result['repeat']} rounds",
        "",
        "| format | pack s (runs) | size MB | size / tar | decode MB/s, Python libs (vs tar.gz) "
        "| decode MB/s, CLI (vs tar.gz) |",
        "|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:  # type: ignore[attr-defined]
        cli = (
            f"{r['decode_cli_mb_s']:.0f} ({r.get('decode_cli_vs_gz', 0):.2f}x)"
            if r["decode_cli_mb_s"]
            else "n/a"
        )
        lines.append(
            f"| {r['format']} | {r['pack_s']:.1f} ({r['pack_runs']}) | {r['size'] / 1e6:.1f} | "
            f"{r['ratio']:.3f} | {r['decode_mb_s']:.0f} ({r['decode_vs_gz']:.2f}x) | {cli} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work", type=Path, default=Path("build/bench"))
    parser.add_argument("--repeat", type=int, default=3, help="decode rounds; runs of the zstd-3 pack")
    parser.add_argument("--repeat-slow", type=int, default=1, help="runs of the slower (level > 3) packs")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    result = run(args.work.resolve(), args.repeat, args.repeat_slow)
    print(markdown(result))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
