"""Where the env lives: extracted onto the volume, or kept there as parts and extracted per container.

``volume``  the env is extracted onto the network volume once; every later start execs it there.
``parts``   the volume keeps only the verified parts (a few large files) and a marker; each cold
            container extracts them onto its own disk (``BOOTSTRAP_CONTAINER_DIR``) and runs from there.
``auto``    measure the volume on first use and pick; the measurement and the choice are written to
            ``<volume>/placement.json`` so every later start (and every other worker on the volume) reads
            the same answer instead of measuring again. Delete that file to measure again.

Why: on a volume where every file operation is a network round trip, creating 40-70k files and then
importing thousands of them on every start costs minutes; a few large parts cost a handful of round
trips, and the container's local disk makes the small files cheap. Where the volume is as fast as a
local disk, extracting once onto it saves each new container its extraction. The probe is that trade
in miniature: it creates, checks and removes small files on the volume and on the container disk, as
extraction does, one on each in turn (so a burst of load elsewhere hits both alike), and takes the median
time per file on each. The thresholds come from the figures in docs/installer.md ("Placement").
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import BootstrapError
from .layout import Layout

log = logging.getLogger("placement")

PROBE_FILES = 32
# "parts" once a small file costs this much on the volume (median, create + write + close + stat): a
# local disk takes 0.02-0.1 ms here, the FUSE passthrough 0.4-0.5 ms at 0 ms per operation (where
# "volume" still wins for new workers) and 8-13 ms at 1 ms per operation (where "volume" takes 10x as
# long on the first start)...
PARTS_MIN_MS = 2.0
# ...and this many times what it costs on the container disk: below either, the volume is as good as
# local for this work and extracting once onto it is cheaper than extracting in every container.
PARTS_RATIO = 8.0


@dataclass(frozen=True)
class Decision:
    mode: str  # "volume" or "parts"
    reason: str
    volume_ms: float | None = None  # median ms per small file, when measured
    local_ms: float | None = None
    measured_at: float | None = None

    def to_dict(self) -> dict[str, object]:
        return {k: v for k, v in asdict(self).items() if v is not None}


def probe(volume_dir: Path, local_dir: Path, files: int = PROBE_FILES) -> tuple[float, float]:
    """Median milliseconds to create, write, close and stat one small file in each directory, the two
    measured in turn."""
    scratch = [d / f".placement-probe-{secrets.token_hex(4)}" for d in (volume_dir, local_dir)]
    times: tuple[list[float], list[float]] = ([], [])
    made: list[Path] = []
    try:
        for d in scratch:
            d.mkdir(parents=True)
        for i in range(files):
            for d, samples in zip(scratch, times, strict=True):
                path = d / f"f{i:03d}"
                made.append(path)
                t0 = time.perf_counter()
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                try:
                    os.write(fd, b"placement probe\n")
                finally:
                    os.close(fd)
                os.stat(path)
                samples.append(time.perf_counter() - t0)
    finally:
        for path in made:
            with contextlib.suppress(OSError):
                path.unlink()
        for d in scratch:
            with contextlib.suppress(OSError):
                d.rmdir()
    return 1000 * statistics.median(times[0]), 1000 * statistics.median(times[1])


def decide(volume_ms: float, local_ms: float) -> Decision:
    slow = volume_ms >= PARTS_MIN_MS and volume_ms >= PARTS_RATIO * max(local_ms, 1e-3)
    if slow:
        reason = (f"a small file costs {volume_ms:.2f} ms on the volume against {local_ms:.3f} ms on the "
                  f"container disk (>= {PARTS_MIN_MS} ms and >= {PARTS_RATIO:g}x): keep parts on the volume, "
                  "extract in each container")
    else:
        reason = (f"a small file costs {volume_ms:.2f} ms on the volume against {local_ms:.3f} ms on the "
                  f"container disk (under {PARTS_MIN_MS} ms or {PARTS_RATIO:g}x): extract once onto the "
                  "volume")
    mode = "parts" if slow else "volume"
    return Decision(mode, reason, round(volume_ms, 4), round(local_ms, 4), time.time())


def choose(mode: str, volume: Layout, local: Layout) -> Decision:
    """The placement for this start: ``mode`` as configured, or for ``auto`` the volume's recorded
    choice, measured now when there is none."""
    if volume.root.resolve() == local.root.resolve():
        return Decision("volume", "the volume is the container disk (no network volume attached)")
    if mode in ("volume", "parts"):
        return Decision(mode, "set by BOOTSTRAP_PLACEMENT / --placement")
    recorded = _read(volume.placement_file)
    if recorded is not None:
        log.info("placement %s, recorded in %s: %s", recorded.mode, volume.placement_file, recorded.reason)
        return recorded
    from . import preflight

    preflight.check_writable(volume)  # a read-only or full volume fails as it always did, in preflight
    preflight.check_writable(local)
    try:
        volume_ms, local_ms = probe(volume.root, local.root)
    except OSError as exc:
        raise BootstrapError("placement", f"could not measure {volume.root} or {local.root}: "
                             f"{exc.strerror or exc}",
                             "check that both are writable, or set BOOTSTRAP_PLACEMENT=volume or parts"
                             ) from None
    decision = decide(volume_ms, local_ms)
    log.info("placement %s, measured now: %s", decision.mode, decision.reason)
    return _record(volume.placement_file, decision)


def _read(path: Path) -> Decision | None:
    try:
        doc = json.loads(path.read_bytes())
        return Decision(doc["mode"], str(doc["reason"]), doc.get("volume_ms"), doc.get("local_ms"),
                        doc.get("measured_at")) if doc.get("mode") in ("volume", "parts") else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _record(path: Path, decision: Decision) -> Decision:
    """First writer wins (an exclusive link of a complete file), so every worker on a volume agrees."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        tmp.write_bytes(json.dumps(decision.to_dict(), indent=1).encode())
        try:
            os.link(tmp, path)
        except FileExistsError:
            other = _read(path)
            if other is not None:
                log.info("another worker recorded placement %s first: using it", other.mode)
                return other
        except OSError as exc:
            log.warning("could not record the placement in %s: %s", path, exc)
    except OSError as exc:
        log.warning("could not record the placement in %s: %s", path, exc)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
    return decision
