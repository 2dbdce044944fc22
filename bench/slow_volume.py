"""Benchmark: the first start on a slow network volume, per placement (issue 10; docs/BENCHMARKS.md
"## Slow volume").

    python bench/slow_volume.py --manifest .cache/demo/release/manifest.json --work /tmp/slowvol \
        --delays 0 1 5 --repeat 3

The volume is a plain directory on this machine's disk ("local"), then the FUSE passthrough of
devtools/slowfs.py with a delay of N ms on every file operation ("fuse N ms"). For each volume and each
placement (``volume``: the env extracted onto the volume; ``parts``: the volume keeps the parts, the
container extracts them onto its own disk), in one run, alternating:

cold       an empty volume and an empty container disk: ``python -m worker.bootstrap --no-exec``, the
           release served over HTTP on 127.0.0.1 (Range), until its "ready" line;
new        the volume as the cold run left it, a new empty container disk (a new worker): the same;
restart    the same container again (its disk kept): the same;
import     ``<env>/bin/python -c "import torch, f5_tts, whisperx"`` from where that placement runs the
           env, the FUSE volume mounted anew first so the kernel's caches of it are empty.

Before every step the FUSE volume is mounted anew (a new container sees a cold client cache); the local
disk's page cache is left as it is (this machine cannot drop it without disturbing others). A cell whose
first round takes longer than ``--max-repeat-s`` is not repeated (the volume placement at 5 ms takes tens
of minutes). It also prints what the ``auto`` placement's probe measures and picks on each volume.
Everything under ``--work`` is deleted at the end unless ``--keep``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from devtools import child_env  # noqa: E402
from devtools.release_server import ReleaseServer  # noqa: E402
from devtools.slowfs import mounted  # noqa: E402
from worker.bootstrap import placement  # noqa: E402
from worker.bootstrap.layout import Layout  # noqa: E402

IMPORT = "import torch, f5_tts, whisperx"


def say(msg: str) -> None:
    print(f"slow-volume: {msg}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def volume_at(kind: float | None, backing: Path, mount: Path) -> Iterator[Path]:
    """The volume directory: ``backing`` itself (local disk) or its slow FUSE view."""
    if kind is None:
        backing.mkdir(parents=True, exist_ok=True)
        yield backing
    else:
        with mounted(backing, mount, kind) as path:
            yield path


def bootstrap(url: str, volume: Path, container: Path, mode: str) -> tuple[float, dict]:
    env = child_env() | {"BOOTSTRAP_CONTAINER_DIR": str(container), "BOOTSTRAP_PLACEMENT": mode,
                         "BOOTSTRAP_VOLUME_FALLBACK": "fail", "BOOTSTRAP_PROGRESS_INTERVAL": "30"}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "worker.bootstrap", "--manifest-url", url, "--volume",
                           str(volume), "--no-exec"], env=env, cwd=ROOT, capture_output=True, text=True)
    took = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"bootstrap failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return took, json.loads(proc.stdout.strip().splitlines()[-1])


def import_time(env_dir: Path) -> float:
    env = {"PATH": f"{env_dir / 'bin'}:/usr/bin:/bin", "HOME": "/tmp", "PYANNOTE_METRICS_ENABLED": "0",
           "ORT_DISABLE_TELEMETRY": "1"}
    t0 = time.perf_counter()
    proc = subprocess.run([str(env_dir / "bin" / "python"), "-c", IMPORT], env=env, capture_output=True,
                          text=True, cwd="/")
    took = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"import failed in {env_dir}:\n{proc.stderr[-3000:]}")
    return took


def remove(*paths: Path) -> None:
    """rm -rf: several times faster than shutil.rmtree on a tree of 70k files."""
    subprocess.run(["rm", "-rf", "--", *map(str, paths)], check=False)


def one_round(url: str, kind: float | None, mode: str, work: Path) -> dict[str, float]:
    backing, mount = work / "volume-backing", work / "volume-mount"
    remove(backing, work / "container-a", work / "container-b")
    out: dict[str, float] = {}
    with volume_at(kind, backing, mount) as vol:
        out["cold"], ready = bootstrap(url, vol, work / "container-a", mode)
        assert ready["downloaded_bytes"] > 0 and ready["placement"] == mode, ready
    with volume_at(kind, backing, mount) as vol:
        out["new"], ready = bootstrap(url, vol, work / "container-b", mode)
        assert ready["downloaded_bytes"] == 0, ready
    with volume_at(kind, backing, mount) as vol:
        out["restart"], ready = bootstrap(url, vol, work / "container-b", mode)
        assert ready["warm"] is True, ready
    with volume_at(kind, backing, mount):
        out["import"] = import_time(Path(ready["path"]))
    out["cold+import"] = out["cold"] + out["import"]
    out["new+import"] = out["new"] + out["import"]
    return out


def probe(kind: float | None, work: Path) -> placement.Decision:
    backing, mount = work / "probe-backing", work / "probe-mount"
    remove(backing)
    local = work / "probe-local"
    with volume_at(kind, backing, mount) as vol:
        return placement.choose("auto", Layout(vol), Layout(local))


def label(kind: float | None) -> str:
    return "local disk" if kind is None else f"fuse {kind:g} ms/op"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--manifest", type=Path, help="a release manifest.json (required unless --report)")
    p.add_argument("--work", type=Path, help="scratch directory on local disk (required unless --report)")
    p.add_argument("--delays", type=float, nargs="+", default=[0.0, 1.0, 5.0])
    p.add_argument("--modes", nargs="+", default=["volume", "parts"], choices=["volume", "parts"])
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--max-repeat-s", type=float, default=300.0)
    p.add_argument("--results", type=Path, help="append every round as a JSON line here")
    p.add_argument("--keep", action="store_true")
    p.add_argument("--report", type=Path, help="only print the tables of a --results file (partial too)")
    args = p.parse_args(argv)
    if args.report:
        return print_report(args.report)
    if args.manifest is None or args.work is None:
        p.error("--manifest and --work are required")
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    kinds: list[float | None] = [None, *args.delays]
    rounds: dict[tuple[str, str], list[dict[str, float]]] = {}
    skip: set[tuple[str, str]] = set()
    try:
        for kind in kinds:
            decision = probe(kind, work)
            say(f"auto on {label(kind)}: {decision.mode} ({decision.reason})")
            probed = {"volume_ms": decision.volume_ms or 0.0, "local_ms": decision.local_ms or 0.0}
            rounds[(label(kind), "auto probe")] = [probed]
            if args.results:
                with open(args.results, "a") as fh:
                    fh.write(json.dumps({"volume": label(kind), "placement": "auto probe", **probed}) + "\n")
        with ReleaseServer(args.manifest.parent) as server:
            url = server.url(args.manifest.name)
            for r in range(args.repeat):
                for kind in kinds:
                    for mode in args.modes:
                        key = (label(kind), mode)
                        if key in skip:
                            continue
                        say(f"round {r + 1}: {key[0]}, placement {mode}")
                        got = one_round(url, kind, mode, work)
                        say(f"  {json.dumps({k: round(v, 2) for k, v in got.items()})}")
                        rounds.setdefault(key, []).append(got)
                        if args.results:
                            with open(args.results, "a") as fh:
                                fh.write(json.dumps({"volume": key[0], "placement": mode, "round": r + 1,
                                                     **got}) + "\n")
                        if got["cold"] > args.max_repeat_s:
                            skip.add(key)
    finally:
        if not args.keep:
            remove(work)
    print(report(rounds))
    return 0


def print_report(results: Path) -> int:
    rounds: dict[tuple[str, str], list[dict[str, float]]] = {}
    for line in results.read_text().splitlines():
        doc = json.loads(line)
        rounds.setdefault((doc["volume"], doc["placement"]), []).append(doc)
    print(report(rounds))
    return 0


def report(rounds: dict[tuple[str, str], list[dict[str, float]]]) -> str:
    steps = ["cold", "new", "restart", "import", "cold+import", "new+import"]
    lines = ["| volume | placement | rounds | " + " | ".join(steps) + " |",
             "| --- | --- | ---: | " + " | ".join("---:" for _ in steps) + " |"]
    base = {mode: rounds.get(("local disk", mode)) for mode in ("volume", "parts")}
    for (vol, mode), rs in rounds.items():
        if mode == "auto probe":
            continue
        med = {s: statistics.median(r[s] for r in rs) for s in steps}
        cells = []
        for s in steps:
            cell = f"{med[s]:.2f} s"
            ref = base.get(mode)
            if ref and vol != "local disk":
                cell += f" ({med[s] / statistics.median(r[s] for r in ref):.2f}x)"
            cells.append(cell)
        lines.append(f"| {vol} | {mode} | {len(rs)} | " + " | ".join(cells) + " |")
    probes = [(vol, rs[0]) for (vol, mode), rs in rounds.items() if mode == "auto probe"]
    lines.append("")
    lines.append("| volume | probe: ms per small file on the volume | on the container disk | auto picks |")
    lines.append("| --- | ---: | ---: | --- |")
    for vol, pr in probes:
        picked = placement.decide(pr["volume_ms"], pr["local_ms"]).mode
        lines.append(f"| {vol} | {pr['volume_ms']:.3f} | {pr['local_ms']:.3f} | {picked} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
