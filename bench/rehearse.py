"""`just rehearse`: the full-size rehearsal of the production pip lock (a benchmark, not a test).

    python bench/rehearse.py [--work .cache/rehearse] [--repeat 5] [--only pack|install|worker] [--keep-env]
                             [--level N]

1. lock     a conda lock of the interpreter alone, solved by `pack lock`'s own code from the example
            channel. That interpreter is THIS MACHINE'S CPython repackaged as a conda package
            (env/example/recipes/python): it stands in for conda-forge's python, which is unreachable
            here. Everything else is the production pip lock.
2. pack     `python -m pack build` of that lock + env/requirements.lock exactly as shipped (CUDA torch and
            the nvidia wheels, installed with the env's pip, --no-deps --require-hashes, from the
            hash-checked wheelhouse .cache/wheels) at the release settings: zstd-19 --long=27 on 2
            threads, the real part size (< 2 GiB). Wall time, env/archive sizes, peak disk. ``--level N``
            packs at zstd-N instead (everything else as released): level 19 compresses at ~1.3 MB/s on
            a busy 2-core box, about two hours for this env; the release workflow packs at 19.
3. install  the release served over HTTP (devtools/release_server.py, Range); the bootstrap onto a fresh
            volume against `curl | tee >(sha256sum) | zstd -d | tar -x` on the same parts, alternating,
            median of --repeat (bench/install.py's two runners).
4. worker   from the installed env: the imports the worker needs; then the bootstrap's warm start
            exec'ing `python -m worker` on tiny models on the runpod local API: warm start to exec, exec
            to ready, a TTS job with word timestamps and a transcription job, on the CPU.
Figures go to WORK/rehearsal.json (each phase adds its own) and a summary on stdout. The release
(WORK/release: parts + manifest.json) is kept for reuse (`--only install|worker` reuse it; so can
other benchmarks); the build env (~9 GB) is deleted after packing unless --keep-env.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from devtools import child_env, demo, devenv  # noqa: E402
from devtools.release_server import ReleaseServer  # noqa: E402
from worker.bootstrap.manifest import read_manifest, sha256_file  # noqa: E402

# The worker's imports (issue 9): what a shipped env must hold.
IMPORTS = ("torch", "torchaudio", "f5_tts.model", "f5_tts.infer.utils_infer", "vocos", "whisperx",
           "whisperx.alignment", "faster_whisper", "ctranslate2", "pyannote.audio", "runpod")
# The local channel is built on this machine just before: any cutoff after that excludes nothing.
CHANNEL_CUTOFF = "2100-01-01T00:00:00Z"
NAME = "f5tts"
GITHUB_RUNNER_FREE = 14e9  # a hosted runner's free disk (shared/DESIGN.md)


def say(msg: str) -> None:
    print(f"rehearse: {msg}", file=sys.stderr, flush=True)


def gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB"


class DiskWatch:
    """The peak of the bytes allocated under some directories, sampled every few seconds."""

    def __init__(self, *roots: Path, every: float = 15.0) -> None:
        self.roots, self.every = roots, every
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> DiskWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.sample())

    def sample(self) -> int:
        return sum(tree_bytes(r) for r in self.roots)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.peak = max(self.peak, self.sample())


def tree_bytes(root: Path) -> int:
    """Bytes allocated on disk under root (st_blocks, like du), links not followed."""
    total = 0
    stack = [str(root)]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except OSError:
            continue
        for entry in entries:
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            total += st.st_blocks * 512
            if entry.is_dir(follow_symlinks=False):
                stack.append(entry.path)
    return total


class Record:
    """WORK/rehearsal.json: what each phase measured, kept across runs of single phases."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict = json.loads(path.read_text()) if path.is_file() else {}

    def put(self, phase: str, figures: dict) -> None:
        self.data[phase] = figures
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=2) + "\n")
        os.replace(tmp, self.path)
        say(f"{phase}: {json.dumps(figures)}")


# -- phases -------------------------------------------------------------------------------------------

def phase_lock(work: Path) -> Path:
    from pack import example
    from pack.lock import lock

    channel = example.ensure_example_lock(work / "build").parent
    spec = work / "interpreter.yml"
    spec.write_text("# The rehearsal's conda part: the example interpreter alone.\n"
                    f"channels: [{channel.as_uri()}]\ndependencies: [python=3.11]\n")
    [conda_lock] = lock(spec, work / "lock", only="conda", exclude_newer=CHANNEL_CUTOFF)
    return conda_lock


def lock_wheel_bytes() -> tuple[int, int]:
    """(files, bytes) of the wheelhouse files the pip lock names by hash."""
    wanted = devenv.locked_hashes()
    names = [name for name, sha in devenv.wheelhouse_hashes().items() if sha in wanted]
    return len(names), sum((devenv.WHEELHOUSE / name).stat().st_size for name in names)


def phase_pack(work: Path, record: Record, keep_env: bool, level: int | None = None) -> Path:
    say("wheels: filling the wheelhouse from the lock (downloads only what is missing)")
    devenv.fill_wheelhouse(Path(sys.executable))
    wheel_files, wheel_bytes = lock_wheel_bytes()
    conda_lock = phase_lock(work)
    release, build_dir, tmp = work / "release", work / "build", work / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pack", "build", "--lock", str(conda_lock), "--pip-lock", str(devenv.LOCK),
           "--wheelhouse", str(devenv.WHEELHOUSE), "--out", str(release), "--work", str(build_dir),
           "--name", NAME, "--reuse"]
    if level is not None:
        cmd += ["--level", str(level)]
    settings = "release settings: pack's defaults" if level is None else f"pack's defaults but zstd-{level}"
    say(f"pack: {' '.join(cmd[1:])} ({settings})")
    env = child_env() | {"TMPDIR": str(tmp)}  # pip's temporary files count in the peak too
    before = _mtime(release / "manifest.json")
    t0 = time.perf_counter()
    with DiskWatch(work, devenv.WHEELHOUSE) as watch:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    took = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"rehearse: pack build failed (exit {proc.returncode}); its log is above")
    manifest_path = Path(proc.stdout.strip().splitlines()[-1])
    manifest = read_manifest(manifest_path)
    previous = record.data.get("pack", {})
    # --reuse kept the pack (same env_id, parts verified) without rewriting its manifest.
    reused = (before is not None and _mtime(manifest_path) == before
              and previous.get("env_id") == manifest.env_id)
    figures = {
        "env_id": manifest.env_id,
        "wheel_files": wheel_files,
        "wheel_bytes": wheel_bytes,
        "env_bytes": manifest.unpacked_size,
        "env_files": manifest.file_count,
        "archive_bytes": manifest.archive.size,
        "ratio": round(manifest.archive.size / max(manifest.unpacked_size or 1, 1), 4),
        "parts": [p.size for p in manifest.parts],
        # A reuse measures nothing new: keep the figures of the build that made the pack.
        "pack_s": previous["pack_s"] if reused else round(took, 1),
        "peak_disk_bytes": previous["peak_disk_bytes"] if reused else watch.peak,
        "settings": manifest.extra.get("pack_options"),
        "tools": manifest.extra.get("tools"),
    }
    record.put("pack", figures)
    if not keep_env:
        shutil.rmtree(build_dir / "envs", ignore_errors=True)
    shutil.rmtree(tmp, ignore_errors=True)
    return manifest_path


def _mtime(path: Path) -> int | None:
    return path.stat().st_mtime_ns if path.exists() else None


def _install_runners():
    path = ROOT / "bench" / "install.py"
    spec = importlib.util.spec_from_file_location("bench_install", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.run_ours, module.run_pipeline


def phase_install(work: Path, manifest_path: Path, record: Record, repeat: int) -> Path:
    """Cold installs, ours against the shell pipeline, alternating; keeps the last volume of ours."""
    run_ours, run_pipeline = _install_runners()
    manifest = read_manifest(manifest_path)
    parts = [p.name for p in manifest.parts]
    ours: list[float] = []
    pipe: list[float] = []
    kept = work / "volume"
    shutil.rmtree(kept, ignore_errors=True)
    with ReleaseServer(manifest_path.parent) as server:
        url = server.base_url
        for i in range(repeat):
            order = ("ours", "pipe") if i % 2 == 0 else ("pipe", "ours")
            for name in order:
                # The last install of ours stays for the worker phase. It is made in place: the marker
                # records the env's path, so a volume moved afterwards is installed again.
                keep = name == "ours" and i == repeat - 1
                dest = kept if keep else work / f"cold-{name}"
                shutil.rmtree(dest, ignore_errors=True)
                subprocess.run(["sync"], check=True)
                took = run_ours(url, dest) if name == "ours" else run_pipeline(url, parts, dest)
                (ours if name == "ours" else pipe).append(round(took, 2))
                if not keep:
                    shutil.rmtree(dest, ignore_errors=True)
                Path(f"{dest}.sha256").unlink(missing_ok=True)
            say(f"install round {i + 1}/{repeat}: ours {ours[-1]:.1f} s, pipeline {pipe[-1]:.1f} s")
    record.put("install", {
        "ours_s": ours, "pipeline_s": pipe,
        "ours_median_s": statistics.median(ours), "pipeline_median_s": statistics.median(pipe),
        "ratio": round(statistics.median(ours) / statistics.median(pipe), 3),
        "archive_bytes": manifest.archive.size, "parts": len(parts),
    })
    return kept


def still_naming(env_dir: Path, old_prefix: str) -> list[str]:
    """Files of the installed env that still hold the build prefix (relocation missed them)."""
    needle = old_prefix.encode()
    hits = []
    for path in sorted(env_dir.rglob("*")):
        if path.is_file() and not path.is_symlink() and _contains(path, needle):
            hits.append(str(path.relative_to(env_dir)))
    return hits


def _contains(path: Path, needle: bytes, chunk: int = 1 << 24) -> bool:
    tail = b""
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            if needle in tail + block:
                return True
            tail = block[-len(needle) + 1:]
    return False


def phase_worker(work: Path, manifest_path: Path, volume: Path, record: Record) -> None:
    manifest = read_manifest(manifest_path)
    env_dir = volume / "envs" / manifest.env_id
    python = env_dir / "bin" / "python"
    if not python.exists():
        raise SystemExit(f"rehearse: no installed env at {env_dir}: run the install phase first")
    leftovers = still_naming(env_dir, str(manifest.extra["prefix"]))
    say(f"relocation: {len(leftovers)} file(s) still name the build prefix {leftovers[:10]}")
    code = ("import importlib, json, time; t = time.perf_counter(); "
            f"[importlib.import_module(m) for m in {list(IMPORTS)!r}]; import torch; "
            "print(json.dumps({'import_s': round(time.perf_counter() - t, 1), 'torch': torch.__version__}))")
    proc = subprocess.run([str(python), "-c", code], env=child_env(), capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit("rehearse: the installed env cannot import the worker's stack:\n"
                         + proc.stderr[-4000:])
    imports = json.loads(proc.stdout.strip().splitlines()[-1])
    say(f"imports from the installed env: {imports}")

    worker_env = demo.phase_models(ROOT / ".cache" / "tiny-models", [])
    note: list[str] = []
    with ReleaseServer(manifest_path.parent) as server:
        t0 = time.perf_counter()
        worker = demo.phase_install(server.url(manifest_path.name), sha256_file(manifest_path), volume,
                                    demo.free_port(), worker_env, note)
        t_exec = time.perf_counter()
        try:
            demo.wait_serving(worker, note)
            t_ready = time.perf_counter()
            wav, _srt, tts, asr = demo.phase_jobs(worker, work / "out", note)
        finally:
            worker.stop()
    record.put("worker", {
        "imports": list(IMPORTS), **imports,
        "files_naming_build_prefix": leftovers,
        "warm_start_to_exec_s": round(t_exec - t0, 2),
        "exec_to_ready_s": round(t_ready - t_exec, 1),
        "downloaded_bytes": worker.ready.get("downloaded_bytes"),
        "tts_duration_s": tts["duration"], "tts_words": len(tts.get("words", [])),
        "transcribe_words": len(asr.get("text", "").split()), "wav": str(wav), "notes": note,
    })


def summary(record: Record) -> None:
    d = record.data
    print("\n== rehearsal ==")
    if p := d.get("pack"):
        print(f"  wheels     {p['wheel_files']} files, {gb(p['wheel_bytes'])}")
        print(f"  env        {gb(p['env_bytes'])}, {p['env_files']:,} files")
        print(f"  archive    {gb(p['archive_bytes'])} ({p['ratio']:.3f} of the env), "
              f"{len(p['parts'])} parts: " + ", ".join(gb(s) for s in p["parts"]))
        print(f"  pack       {p['pack_s']:.0f} s; peak disk {gb(p['peak_disk_bytes'])} "
              f"({p['peak_disk_bytes'] / GITHUB_RUNNER_FREE:.2f} of a hosted runner's ~14 GB free)")
    if i := d.get("install"):
        print(f"  install    ours {i['ours_median_s']:.1f} s vs pipeline {i['pipeline_median_s']:.1f} s "
              f"(median of {len(i['ours_s'])}): {i['ratio']:.2f}x")
    if w := d.get("worker"):
        print(f"  worker     imports {w['import_s']} s; warm start to exec {w['warm_start_to_exec_s']} s, "
              f"exec to ready {w['exec_to_ready_s']} s; TTS {w['tts_duration_s']:.2f} s, "
              f"{w['tts_words']} words timed; transcribe {w['transcribe_words']} words")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=ROOT / ".cache" / "rehearse")
    ap.add_argument("--repeat", type=int, default=5, help="cold installs of each kind (alternating)")
    ap.add_argument("--only", choices=("pack", "install", "worker"))
    ap.add_argument("--keep-env", action="store_true", help="keep the ~9 GB build env after packing")
    ap.add_argument("--level", type=int, help="zstd level instead of the release's (recorded in the figures)")
    args = ap.parse_args(argv)
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    record = Record(work / "rehearsal.json")
    manifest_path = work / "release" / "manifest.json"
    if args.only in (None, "pack"):
        manifest_path = phase_pack(work, record, args.keep_env, args.level)
    if args.only in (None, "install"):
        volume = phase_install(work, manifest_path, record, args.repeat)
    else:
        volume = work / "volume"
    if args.only in (None, "worker"):
        phase_worker(work, manifest_path, volume, record)
    summary(record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
