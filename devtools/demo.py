"""`just demo`: the whole chain, offline, on this machine.

    python -m devtools.demo [--work .cache/demo] [--keep-volume] [--port N]

1. models   tiny random-weight F5-TTS / Vocos / Whisper / wav2vec2 models (devtools.tiny), made once
2. wheels   the production pip lock's files (env/requirements.lock: the same torch 2.8 + CUDA wheels
            that ship; they run on a CPU) in the wheelhouse .cache/wheels, which ./dev fills from PyPI
            when it installs the venv from the same lock; checked by hash, downloaded only if missing
3. pack     the bundled example env (conda packages built from env/example recipes, with an interpreter)
            + that lock installed with the env's own pip (--no-deps --require-hashes), packed into
            zstd parts + manifest.json; reused when the manifest for the same inputs is already there.
            The build env (~9 GB) is deleted once packed: a reuse needs only the release directory
4. serve    the release directory over HTTP (Range) on 127.0.0.1, as GitHub would serve release assets
5. install  the real installer (python -m worker.bootstrap) onto a temporary volume, which then execs
            the worker from the installed env's own interpreter on the runpod local API
6. jobs     a TTS job with word timestamps + SRT subtitles and a transcription job, over HTTP
Then a summary (phase timings, sizes, throughput). The last line is the path of the WAV it wrote.

The worker's code stays outside the env, as in the image: the installer puts the directory holding the
`worker` package on PYTHONPATH when it execs the env's interpreter.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from artifact.files import sha256_file
from artifact.manifest import read_manifest
from devtools import child_env, devenv
from devtools.release_server import ReleaseServer

ROOT = Path(__file__).resolve().parents[1]
# The production pip lock itself: the demo env holds what ships (one resolution, see env/README.md).
DEMO_LOCK = devenv.LOCK
# The demo packs at a fast level: it is a local round trip, not a release (the release level is pack's
# default, measured in docs/BENCHMARKS.md).
DEMO_LEVEL = 1
REF_TEXT = "Some call me nature, others call me mother nature."
TEXT = "The whole chain ran offline. It packed, served, installed and started this worker."


class DemoError(Exception):
    """A demo phase failed; the message says which and why."""


def say(msg: str) -> None:
    print(f"demo: {msg}", file=sys.stderr, flush=True)


@dataclass
class Summary:
    phases: list[tuple[str, float, str]] = field(default_factory=list)
    facts: list[tuple[str, str]] = field(default_factory=list)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[list[str]]:
        say(f"[{name}] start")
        note: list[str] = []
        t0 = time.perf_counter()
        try:
            yield note
        except DemoError:
            raise
        except Exception as exc:
            raise DemoError(f"{name}: {type(exc).__name__}: {exc}") from exc
        took = time.perf_counter() - t0
        self.phases.append((name, took, "; ".join(note)))
        say(f"[{name}] done in {took:.1f} s" + (f" ({'; '.join(note)})" if note else ""))

    def print(self) -> None:
        print("\n== demo summary ==")
        for name, took, note in self.phases:
            print(f"  {name:<8} {took:7.1f} s  {note}")
        for key, value in self.facts:
            print(f"  {key:<22} {value}")


def mb(n: float) -> str:
    return f"{n / 1e6:,.1f} MB"


def run_logged(cmd: list[str], prefix: str, env: dict[str, str] | None = None) -> list[str]:
    """Run a command, stream its stderr as prefixed lines (progress stays visible), return stdout lines."""
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None and proc.stdout is not None
    pump = threading.Thread(target=_pump, args=(proc.stderr, prefix), daemon=True)
    pump.start()
    out = proc.stdout.read().splitlines()
    proc.wait()
    pump.join()
    if proc.returncode != 0:
        raise DemoError(f"{prefix}: `{' '.join(cmd[:4])} ...` exited {proc.returncode} (see its lines above)")
    return out


def _pump(stream, prefix: str) -> None:
    for line in stream:
        print(f"  [{prefix}] {line.rstrip()}", file=sys.stderr, flush=True)


def base_env() -> dict[str, str]:
    return child_env() | {"PYTHONUNBUFFERED": "1"}


# -- phases -------------------------------------------------------------------------------------------

def phase_models(cache: Path, note: list[str]) -> dict[str, str]:
    from devtools.tiny import TINY_VERSION, ensure_tiny_models, tiny_env

    existed = (cache / TINY_VERSION).is_dir()
    root = ensure_tiny_models(cache)
    note.append(f"reused {root}" if existed else f"generated into {root}")
    return tiny_env(root)


def phase_wheels(wheelhouse: Path, note: list[str]) -> None:
    if not devenv.wheelhouse_missing(wheelhouse, DEMO_LOCK):
        note.append(f"every file of {DEMO_LOCK.name} already in {wheelhouse}, hashes match the lock: reused")
        return
    before = len(list(wheelhouse.glob("*"))) if wheelhouse.is_dir() else 0
    run_logged([sys.executable, "-m", "devtools.devenv", "wheels", "--wheelhouse", str(wheelhouse)], "wheels",
               env=base_env())
    files = [p for p in wheelhouse.iterdir() if p.is_file()]
    note.append(f"{len(files)} files, {mb(sum(p.stat().st_size for p in files))}, "
                f"{len(files) - before} downloaded")


def phase_pack(work: Path, wheelhouse: Path, note: list[str]) -> Path:
    release = work / "release"
    out = run_logged([sys.executable, "-m", "pack", "build", "--pip-lock", str(DEMO_LOCK),
                      "--wheelhouse", str(wheelhouse), "--out", str(release), "--work", str(work / "build"),
                      "--name", "demo", "--level", str(DEMO_LEVEL), "--reuse"],
                     "pack", env=base_env())
    shutil.rmtree(work / "build" / "envs", ignore_errors=True)
    manifest_path = Path(out[-1].strip())
    manifest = read_manifest(manifest_path)
    note.append(f"env_id {manifest.env_id[:12]}, {len(manifest.parts)} part(s), archive "
                f"{mb(manifest.archive.size)}")
    return manifest_path


@dataclass
class Worker:
    proc: subprocess.Popen[str]
    ready: dict
    port: int

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def container_disk(volume: Path) -> Path:
    return volume.with_name(volume.name + "-container-disk")


def phase_install(manifest_url: str, manifest_sha: str, volume: Path, port: int, worker_env: dict[str, str],
                  note: list[str]) -> Worker:
    env = base_env() | worker_env | {"WORKER_VOLUME": str(volume), "WORKER_DEVICE": "cpu",
                                     "WORKER_ALLOW_PRIVATE_URLS": "1",
                                     # The container's own disk (placement parts; auto measures it too).
                                     "BOOTSTRAP_CONTAINER_DIR": str(container_disk(volume))}
    cmd = [sys.executable, "-m", "worker.bootstrap", "--manifest-url", manifest_url,
           "--manifest-sha256", manifest_sha, "--volume", str(volume), "--failure-handler", "off",
           "--", "--rp_serve_api", "--rp_api_port", str(port), "--rp_api_host", "127.0.0.1"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stderr is not None
    threading.Thread(target=_pump, args=(proc.stderr, "install/worker"), daemon=True).start()
    # The installer's last line before it execs the worker is the contract's JSON.
    ready: dict | None = None
    for line in proc.stdout:
        line = line.strip()
        if line.startswith("{") and '"status"' in line:
            ready = json.loads(line)
            break
    if ready is None or ready.get("status") != "ready":
        proc.wait()
        raise DemoError(f"install: the installer did not report ready (exit {proc.returncode}): {ready}")
    threading.Thread(target=_pump, args=(proc.stdout, "worker"), daemon=True).start()
    note.append(f"env at {ready['path']}, downloaded {mb(ready.get('downloaded_bytes', 0))}")
    return Worker(proc, ready, port)


def post(port: int, path: str, payload: dict, timeout: float = 600) -> dict:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=json.dumps(payload).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


def wait_serving(worker: Worker, note: list[str], timeout: float = 900) -> None:
    """Models load before runpod starts, so the first answer proves the warm worker is up."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if worker.proc.poll() is not None:
            raise DemoError(f"worker: exited {worker.proc.returncode} before serving (see its lines above)")
        try:
            post(worker.port, "/runsync", {"input": {"task": "voices"}}, timeout=10)
            note.append(f"serving on 127.0.0.1:{worker.port}")
            return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(1)
    raise DemoError(f"worker: not serving after {timeout:.0f} s")


def job_output(reply: dict) -> dict:
    if reply.get("status") not in (None, "COMPLETED"):
        raise DemoError(f"jobs: job ended {reply.get('status')}: {reply}")
    output = reply.get("output")
    # Under the streaming-capable (generator) handler a non-streamed job's output is a one-item list.
    if isinstance(output, list) and len(output) == 1:
        output = output[0]
    if not isinstance(output, dict) or "error" in output:
        raise DemoError(f"jobs: the worker answered {str(output)[:500]}")
    return output


def reference_audio() -> Path:
    """The English example clip shipped in the f5_tts wheel (f5_tts is a namespace package: no __file__)."""
    from importlib.resources import files

    return Path(str(files("f5_tts") / "infer" / "examples" / "basic" / "basic_ref_en.wav"))


def phase_jobs(worker: Worker, out_dir: Path, note: list[str]) -> tuple[Path, Path, dict, dict]:
    ref = base64.b64encode(reference_audio().read_bytes()).decode()
    tts = job_output(post(worker.port, "/runsync", {"input": {
        "text": TEXT, "ref_audio": ref, "ref_text": REF_TEXT, "seed": 7, "nfe_step": 16,
        "format": "wav", "timestamps": True, "subtitles": "srt"}}))
    out_dir.mkdir(parents=True, exist_ok=True)
    wav, srt = out_dir / "demo.wav", out_dir / "demo.srt"
    wav.write_bytes(base64.b64decode(tts["audio"]))
    srt.write_text(tts.get("subtitles", ""))
    check_wav(wav, tts)
    asr = job_output(post(worker.port, "/runsync", {"input": {
        "task": "transcribe", "audio": tts["audio"], "timestamps": True}}))
    # The tiny random Whisper emits nonsense tokens, which the tiny aligner may not place: few or no words.
    note.append(f"tts {tts['duration']:.2f} s of audio, {len(tts.get('words', []))} words timed; "
                f"transcribe {len(asr.get('text', '').split())} words, {len(asr.get('words', []))} aligned")
    return wav, srt, tts, asr


def check_wav(path: Path, tts: dict) -> None:
    import soundfile

    info = soundfile.info(str(path))
    if info.samplerate != tts["sample_rate"] or info.frames == 0:
        raise DemoError(f"jobs: {path} is not the audio the worker described ({info})")
    if abs(info.frames / info.samplerate - tts["duration"]) > 0.05:
        raise DemoError(f"jobs: {path} lasts {info.frames / info.samplerate:.2f} s, worker said "
                        f"{tts['duration']:.2f} s")


# -- main ---------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=ROOT / ".cache" / "demo",
                        help="where wheels, the build and the release are kept between runs")
    parser.add_argument("--tiny-cache", type=Path, default=ROOT / ".cache" / "tiny-models")
    parser.add_argument("--wheelhouse", type=Path, default=devenv.WHEELHOUSE,
                        help="the lock's wheels (shared with ./dev's venv install)")
    parser.add_argument("--port", type=int, default=0, help="local API port (default: a free one)")
    parser.add_argument("--keep-volume", action="store_true", help="keep the temporary volume afterwards")
    args = parser.parse_args(argv)
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    summary = Summary()
    worker: Worker | None = None
    volume = Path(tempfile.mkdtemp(prefix="volume-", dir=work))
    t_start = time.perf_counter()
    try:
        with summary.phase("models") as note:
            worker_env = phase_models(args.tiny_cache, note)
        with summary.phase("wheels") as note:
            phase_wheels(args.wheelhouse, note)
        with summary.phase("pack") as note:
            manifest_path = phase_pack(work, args.wheelhouse, note)
        manifest = read_manifest(manifest_path)
        with ReleaseServer(manifest_path.parent) as server:
            with summary.phase("install") as note:
                worker = phase_install(server.url(manifest_path.name), sha256_file(manifest_path), volume,
                                       args.port or free_port(), worker_env, note)
            install_s = summary.phases[-1][1]
            with summary.phase("start") as note:
                wait_serving(worker, note)
            with summary.phase("jobs") as note:
                wav, srt, tts, asr = phase_jobs(worker, work / "out", note)
            served = sum(server.bytes_served.values())
        downloaded = worker.ready.get("downloaded_bytes", 0)
        summary.facts += [
            ("archive", f"{mb(manifest.archive.size)} in {len(manifest.parts)} part(s)"),
            ("unpacked", f"{mb(manifest.unpacked_size or 0)}, {manifest.file_count or 0:,} files"),
            ("ratio", f"{manifest.archive.size / max(manifest.unpacked_size or 1, 1):.3f} of unpacked"),
            ("served by HTTP", mb(served)),
            ("install throughput", f"{mb(downloaded / install_s)}/s downloaded, "
             f"{mb((manifest.unpacked_size or 0) / install_s)}/s unpacked, over {install_s:.1f} s"
             if downloaded else "warm (nothing downloaded)"),
            ("tts timings (s)", json.dumps(tts.get("timings", {}))),
            ("transcript", repr(asr.get("text", ""))[:80]),
            ("subtitles", str(srt)),
            ("total", f"{time.perf_counter() - t_start:.1f} s"),
        ]
    except DemoError as exc:
        say(f"FAILED: {exc}")
        return 1
    finally:
        if worker is not None:
            worker.stop()
        if not args.keep_volume:
            shutil.rmtree(volume, ignore_errors=True)
            shutil.rmtree(container_disk(volume), ignore_errors=True)
    summary.print()
    print(wav)
    return 0


if __name__ == "__main__":
    sys.exit(main())
