"""The placement choice (worker/bootstrap/placement.py): explicit modes, the ``auto`` probe on a real slow
volume (the FUSE passthrough of devtools/slowfs.py, a delay on every file operation) against a plain
directory, and the recorded choice every later start and every other worker reads."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools import slowfs
from worker.bootstrap import placement
from worker.bootstrap.layout import Layout

from .conftest import Artifact, Server, bootstrap_env, run_bootstrap


@pytest.fixture
def slow_volume(tmp_path: Path) -> Iterator[Path]:
    why = slowfs.available()
    if why:
        pytest.skip(f"no slow volume here: {why}")
    with slowfs.mounted(tmp_path / "backing", tmp_path / "slow", delay_ms=2.0) as mount:
        yield mount


def test_decide_thresholds() -> None:
    assert placement.decide(0.05, 0.04).mode == "volume"  # as fast as the container disk
    assert placement.decide(0.45, 0.01).mode == "volume"  # FUSE's own overhead: slower, still cheap
    assert placement.decide(9.0, 1.5).mode == "volume"  # the container disk is as slow
    slow = placement.decide(10.0, 0.1)
    assert slow.mode == "parts" and "10.00 ms" in slow.reason and slow.volume_ms == 10.0


def test_explicit_modes_and_the_no_volume_case(tmp_path: Path) -> None:
    vol, local = Layout(tmp_path / "vol"), Layout(tmp_path / "local")
    assert placement.choose("parts", vol, local).mode == "parts"
    assert placement.choose("volume", vol, local).mode == "volume"
    # The volume fallback put everything on the container disk already: nothing to split.
    assert placement.choose("parts", local, local).mode == "volume"
    assert not vol.placement_file.exists()


def test_auto_on_a_plain_directory_extracts_onto_the_volume_and_records_it(tmp_path: Path) -> None:
    vol, local = Layout(tmp_path / "vol"), Layout(tmp_path / "local")
    vol.root.mkdir()
    first = placement.choose("auto", vol, local)
    assert first.mode == "volume" and first.volume_ms is not None and first.local_ms is not None
    recorded = json.loads(vol.placement_file.read_text())
    assert recorded["mode"] == "volume" and recorded["volume_ms"] == first.volume_ms
    assert placement.choose("auto", vol, local) == first  # read back, not measured again
    assert not [p for p in vol.root.iterdir() if p.name.startswith(".placement-probe")]


def test_auto_on_a_slow_volume_keeps_parts(slow_volume: Path, tmp_path: Path) -> None:
    decision = placement.choose("auto", Layout(slow_volume), Layout(tmp_path / "local"))
    assert decision.mode == "parts", decision
    assert decision.volume_ms is not None and decision.volume_ms >= 2.0  # at least one round trip
    assert json.loads(Layout(slow_volume).placement_file.read_text())["mode"] == "parts"


def test_the_first_recorded_choice_wins(tmp_path: Path) -> None:
    path = tmp_path / "placement.json"
    picks = [placement.Decision("volume", "a"), placement.Decision("parts", "b")] * 4
    got: list[placement.Decision] = []
    threads = [threading.Thread(target=lambda d=d: got.append(placement._record(path, d))) for d in picks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({d.mode for d in got}) == 1
    assert json.loads(path.read_text())["mode"] == got[0].mode


def test_auto_end_to_end_on_a_slow_volume(slow_volume: Path, tmp_path: Path, server: Server,
                                          artifact: Artifact) -> None:
    env = bootstrap_env(BOOTSTRAP_PLACEMENT="auto", BOOTSTRAP_CONTAINER_DIR=str(tmp_path / "disk"))
    run = run_bootstrap("--manifest-url", server.manifest_url(), "--volume", str(slow_volume), "--no-exec",
                        env=env)
    assert run.code == 0, run.stderr
    assert run.result["placement"] == "parts"
    assert run.result["path"] == str(tmp_path / "disk" / "envs" / artifact.env_id)
    assert "placement parts, measured now: a small file costs" in run.stderr  # what it measured, and why
    again = run_bootstrap("--manifest-url", server.manifest_url(), "--volume", str(slow_volume), "--no-exec",
                          env=env)
    assert again.code == 0 and again.result["warm"], again.stderr
    assert "placement parts, recorded in" in again.stderr
