"""The installer end to end, as the slim image runs it: real processes, a real HTTP server, real files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from worker.bootstrap.__main__ import main
from worker.bootstrap.layout import Layout
from worker.bootstrap.lease import InUse

from .conftest import (
    ROOT,
    Artifact,
    Placement,
    Server,
    assert_tree_matches,
    bootstrap_env,
    build_tar,
    make_env_artifact,
    run_bootstrap,
    tiny_env_files,
    write_artifact,
)


def _args(server: Server, vol: Path, *extra: str) -> list[str]:
    vol.mkdir(exist_ok=True)
    return ["--manifest-url", server.manifest_url(), "--volume", str(vol), "--no-exec", *extra]


def test_cold_then_warm(tmp_path: Path, server: Server, artifact: Artifact, placement: Placement) -> None:
    vol = tmp_path / "vol"
    cold = run_bootstrap(*_args(server, vol), env=placement.env())
    assert cold.code == 0, cold.stderr
    res = cold.result
    env_dir = placement.ready_path(vol, artifact)
    assert env_dir is not None and res["placement"] == placement.mode
    assert res["path"] == str(env_dir) and res["downloaded_bytes"] == artifact.manifest.archive.size
    assert_tree_matches(env_dir, artifact.files)  # conda-unpack ran where the env lives
    for phase in ("preflight", "manifest", "placement", "lease", "download", "extract", "relocate", "commit"):
        assert f"INFO {phase}: start" in cold.stderr and f"INFO {phase}: done in" in cold.stderr
    served = server.bytes_served
    warm = run_bootstrap(*_args(server, vol), env=placement.env())
    assert warm.code == 0 and warm.result["downloaded_bytes"] == 0 and warm.result["warm"] is True
    assert warm.result["path"] == str(env_dir)
    assert server.bytes_served - served == len(artifact.manifest_path.read_bytes())  # the manifest only
    runs = (vol / "logs" / "runs.jsonl").read_text().splitlines()
    assert [json.loads(r)["status"] for r in runs] == ["ready", "ready"]


def test_new_container_downloads_nothing(tmp_path: Path, server: Server, artifact: Artifact,
                                         placement: Placement) -> None:
    """A second worker on the volume (another container, an empty disk) downloads nothing: in the parts
    placement it extracts the parts the volume keeps, checking the whole archive again."""
    vol = tmp_path / "vol"
    assert run_bootstrap(*_args(server, vol), env=placement.env("c1")).code == 0
    served = server.bytes_served
    other = run_bootstrap(*_args(server, vol), env=placement.env("c2"))
    assert other.code == 0, other.stderr
    assert other.result["downloaded_bytes"] == 0
    assert server.bytes_served - served == len(artifact.manifest_path.read_bytes())
    path = placement.ready_path(vol, artifact, "c2")
    assert path is not None and other.result["path"] == str(path)
    assert_tree_matches(path, artifact.files)
    if placement.mode == "parts":
        assert other.result["warm"] is False and "archive sha256 verified" in other.stderr
        assert not (vol / "envs" / artifact.env_id).exists()  # the volume holds parts only
        assert sorted(p.name for p in (vol / "parts" / artifact.env_id).iterdir()) == sorted(
            p.name for p in artifact.manifest.parts)


def test_switching_placement_downloads_nothing(tmp_path: Path, server: Server, artifact: Artifact) -> None:
    """The volume holds the env in one form; a start with the other placement uses it as it is: parts are
    extracted onto the volume without a download, and a tree on the volume is run from there."""
    vol = tmp_path / "vol"
    parts, volume = Placement("parts", tmp_path), Placement("volume", tmp_path)
    assert run_bootstrap(*_args(server, vol), env=parts.env("c1")).code == 0
    served = server.bytes_served
    run = run_bootstrap(*_args(server, vol), env=volume.env("c2"))
    assert run.code == 0 and run.result["downloaded_bytes"] == 0, run.stderr
    assert run.result["path"] == str(vol / "envs" / artifact.env_id)
    assert_tree_matches(vol / "envs" / artifact.env_id, artifact.files)
    assert (vol / "parts" / f"{artifact.env_id}.ready.json").is_file()  # still kept for other containers
    again = run_bootstrap(*_args(server, vol), env=parts.env("c3"))  # a new container, parts placement
    assert again.code == 0 and again.result["warm"] and again.result["placement"] == "volume"
    assert server.bytes_served - served == 2 * len(artifact.manifest_path.read_bytes())


def test_warm_start_pinned_needs_no_network(tmp_path: Path, server: Server, artifact: Artifact,
                                            placement: Placement) -> None:
    vol = tmp_path / "vol"
    pin = artifact.manifest_sha256
    assert run_bootstrap(*_args(server, vol, "--manifest-sha256", pin), env=placement.env()).code == 0
    server.close()  # nothing listens any more
    warm = run_bootstrap("--manifest-url", server.manifest_url(), "--volume", str(vol), "--no-exec",
                         "--manifest-sha256", pin, env=placement.env())
    assert warm.code == 0, warm.stderr
    assert warm.result["warm"] and warm.result["downloaded_bytes"] == 0
    assert "using pinned manifest cached" in warm.stderr
    if placement.mode == "parts":  # a new container needs no network either: the parts are on the volume
        other = run_bootstrap("--manifest-url", server.manifest_url(), "--volume", str(vol), "--no-exec",
                              "--manifest-sha256", pin, env=placement.env("c2"))
        assert other.code == 0 and other.result["downloaded_bytes"] == 0, other.stderr


def test_warm_start_does_not_rehash(tmp_path: Path, server: Server, artifact: Artifact,
                                    placement: Placement) -> None:
    vol = tmp_path / "vol"
    assert run_bootstrap(*_args(server, vol), env=placement.env()).code == 0
    # The warm check trusts the marker + install stamp; it must not read the env's files.
    env_dir = placement.ready_path(vol, artifact)
    assert env_dir is not None
    big = env_dir / "lib" / "big.bin"
    big.chmod(0)
    os.chown(big, 65534, 65534) if os.geteuid() == 0 else None
    warm = run_bootstrap(*_args(server, vol), env=placement.env())
    assert warm.code == 0 and warm.result["warm"]


def test_env_without_conda_unpack(tmp_path: Path, server: Server, placement: Placement) -> None:
    art = make_env_artifact(server.root, with_unpack=False, n_files=5)
    run = run_bootstrap(*_args(server, tmp_path / "vol"), env=placement.env())
    assert run.code == 0, run.stderr
    assert run.result["relocated"] is False
    assert_tree_matches(Path(run.result["path"]), art.files, relocated=False)
    assert "nothing to relocate" in run.stderr


def test_dest_prefix_lands_exactly_there(tmp_path: Path, server: Server, placement: Placement) -> None:
    prefix = tmp_path / "elsewhere" / "fixed-prefix"
    files = tiny_env_files(n_files=3, with_unpack=False)
    write_artifact(server.root, build_tar(files), dest_prefix=str(prefix), files=files)
    run = run_bootstrap(*_args(server, tmp_path / "vol"), env=placement.env())
    assert run.code == 0, run.stderr
    assert run.result["path"] == str(prefix)
    assert (prefix / "etc" / "config.txt").is_file()


def test_dest_prefix_refuses_foreign_directory(tmp_path: Path, server: Server) -> None:
    prefix = tmp_path / "someone-elses"
    prefix.mkdir()
    (prefix / "precious").write_text("keep me")
    write_artifact(server.root, build_tar(tiny_env_files(n_files=1, with_unpack=False)),
                   dest_prefix=str(prefix))
    run = run_bootstrap(*_args(server, tmp_path / "vol"))
    assert run.code == 16 and run.result["phase"] == "relocate"
    assert "dest_prefix" in run.result["error"] and "relocatable" in run.result["remedy"]
    assert (prefix / "precious").read_text() == "keep me"


def test_wrong_pin(tmp_path: Path, server: Server, artifact: Artifact) -> None:
    run = run_bootstrap(*_args(server, tmp_path / "vol", "--manifest-sha256", "0" * 64))
    assert run.code == 11 and run.result["phase"] == "manifest"
    assert "pinned" in run.result["error"] and "MANIFEST_SHA256" in run.result["remedy"]
    assert server.part_requests() == []


def test_bad_pin_syntax_is_a_config_error(tmp_path: Path, server: Server, artifact: Artifact) -> None:
    run = run_bootstrap(*_args(server, tmp_path / "vol", "--manifest-sha256", "xyz"))
    assert run.code == 10 and run.result["phase"] == "config"


def test_unknown_format(tmp_path: Path, server: Server, artifact: Artifact) -> None:
    doc = json.loads(artifact.manifest_path.read_text())
    doc["format"] = 2
    artifact.manifest_path.write_text(json.dumps(doc))
    run = run_bootstrap(*_args(server, tmp_path / "vol"))
    assert run.code == 11 and run.result["phase"] == "manifest"
    assert "unknown manifest format 2" in run.result["error"]


HOSTILE_MANIFESTS = {
    "nested": "[" * 100_000,
    "nested-inside": '{"format": 1, "env_id": ' + "[" * 50_000 + "]" * 50_000 + "}",
    "huge-value": '{"format": 1, "env_id": "' + "x" * 10_000_000 + '"}',
    "huge-integer": '{"format": 1, "archive": {"size": ' + "9" * 5000 + "}}",
}


@pytest.mark.parametrize("text", HOSTILE_MANIFESTS.values(), ids=HOSTILE_MANIFESTS.keys())
def test_hostile_manifest_is_phase_manifest(tmp_path: Path, server: Server, artifact: Artifact,
                                            text: str) -> None:
    artifact.manifest_path.write_text(text)
    run = run_bootstrap(*_args(server, tmp_path / "vol"))
    assert run.code == 11 and run.result["phase"] == "manifest", run.stdout[-500:]
    assert len(run.stdout) < 4000 and "Traceback" not in run.stderr
    assert server.part_requests() == []


def test_missing_manifest_url(tmp_path: Path) -> None:
    run = run_bootstrap("--volume", str(tmp_path), "--no-exec")
    assert run.code == 11 and "MANIFEST_URL" in run.result["remedy"]


def test_env_vars_configure_and_flags_override(tmp_path: Path, server: Server, artifact: Artifact) -> None:
    vol = tmp_path / "vol"
    vol.mkdir()
    env = bootstrap_env(MANIFEST_URL=server.manifest_url(), RUNPOD_VOLUME=str(tmp_path / "elsewhere"))
    run = run_bootstrap("--volume", str(vol), "--no-exec", env=env)
    assert run.code == 0 and run.result["volume"] == str(vol)
    bad = run_bootstrap("--no-exec", env=bootstrap_env(MANIFEST_URL=server.manifest_url(),
                                                       BOOTSTRAP_PARALLEL="many"))
    assert bad.code == 10 and "BOOTSTRAP_PARALLEL" in bad.result["error"]


def test_volume_missing_falls_back_loudly_or_fails(tmp_path: Path, server: Server,
                                                   artifact: Artifact) -> None:
    missing = tmp_path / "no-volume"
    container = tmp_path / "container-disk"
    run = run_bootstrap("--manifest-url", server.manifest_url(), "--volume", str(missing), "--no-exec",
                        env=bootstrap_env(BOOTSTRAP_CONTAINER_DIR=str(container),
                                          BOOTSTRAP_VOLUME_FALLBACK="container"))
    assert run.code == 0, run.stderr
    assert run.result["volume"] == str(container) and "IS MISSING" in run.stderr
    fail = run_bootstrap("--manifest-url", server.manifest_url(), "--volume", str(missing), "--no-exec",
                         "--volume-fallback", "fail")
    assert fail.code == 13 and fail.result["phase"] == "preflight"
    assert "network volume" in fail.result["remedy"]


@pytest.mark.parametrize("kind", ["regular-file", "through-a-file"])
def test_a_volume_that_is_not_a_directory_is_refused_not_replaced(tmp_path: Path, server: Server,
                                                                  artifact: Artifact, kind: str) -> None:
    afile = tmp_path / "volume-file"
    afile.write_text("not a volume")
    volume = afile if kind == "regular-file" else afile / "sub"
    container = tmp_path / "container-disk"
    run = run_bootstrap("--manifest-url", server.manifest_url(), "--volume", str(volume), "--no-exec",
                        env=bootstrap_env(BOOTSTRAP_CONTAINER_DIR=str(container),
                                          BOOTSTRAP_VOLUME_FALLBACK="container"))
    assert run.code == 13 and run.result["phase"] == "preflight", run.stderr
    assert str(volume) in run.result["error"] and "IS MISSING" not in run.stderr
    assert "RUNPOD_VOLUME" in run.result["remedy"]
    if kind == "regular-file":
        assert "is not a directory (it is a regular file)" in run.result["error"]
    assert not container.exists() and afile.read_text() == "not a volume"


def test_exec_runs_env_python_activated(tmp_path: Path, server: Server, artifact: Artifact,
                                        placement: Placement) -> None:
    vol = tmp_path / "vol"
    vol.mkdir()
    proc = subprocess.run([sys.executable, "-m", "worker.bootstrap", "--manifest-url", server.manifest_url(),
                           "--volume", str(vol), "--", "--extra-arg"], capture_output=True, text=True,
                          env={k: v for k, v in placement.env().items() if k != "PYTHONPATH"},
                          cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    ready = json.loads(lines[-2])
    assert ready["status"] == "ready"
    shown = json.loads(lines[-1])  # printed by the env's bin/python after exec
    env_dir = placement.ready_path(vol, artifact)
    assert env_dir is not None
    env = shown["env"]
    assert shown["argv"] == ["-m", "worker", "--extra-arg"]
    assert env["PATH"].split(os.pathsep)[0] == str(env_dir / "bin")
    assert env["CONDA_PREFIX"] == str(env_dir) and env["CONDA_DEFAULT_ENV"] == str(env_dir)
    assert env["DEMO_ACTIVATED"] == "yes-from-activate-d"  # the activate.d script's effect
    assert env["PYTHONPATH"].split(os.pathsep)[0] == str(ROOT)
    assert shown["worker_origin"] == str(ROOT / "worker" / "__init__.py")  # code from the image
    assert env["BOOTSTRAP_ENV_ID"] == artifact.env_id
    in_use = [Path(p) for p in env["BOOTSTRAP_IN_USE_FILE"].split(os.pathsep)]
    assert in_use[0].parent == Layout(vol).in_use_dir(artifact.env_id) and in_use[0].is_file()
    if placement.mode == "parts":  # the tree on the container disk is registered there too
        assert in_use[1].parent == Layout(placement.container()).in_use_dir(artifact.env_id)
        assert in_use[1].is_file()


def test_in_use_from_environ(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BOOTSTRAP_IN_USE_FILE", str(tmp_path / "inuse" / "me.json"))
    reg = InUse.from_environ(heartbeat_s=0.05)
    assert reg is not None
    reg.start()
    first = reg.path.stat().st_mtime_ns
    time.sleep(0.3)
    assert reg.path.stat().st_mtime_ns > first
    reg.stop()


def test_doctor(tmp_path: Path, server: Server, artifact: Artifact) -> None:
    vol = tmp_path / "vol"
    assert run_bootstrap(*_args(server, vol)).code == 0
    other = make_env_artifact(server.root / "v2", n_files=2)
    server.faults.missing.add(other.manifest.parts[0].name)
    fail = run_bootstrap("--manifest-url", f"{server.url}/v2/manifest.json", "--volume", str(vol),
                         "--no-exec")
    assert fail.code == 14
    doc = run_bootstrap("doctor", "--volume", str(vol))
    assert doc.code == 0
    assert artifact.env_id in doc.stdout and "ok" in doc.stdout
    assert "last failure" in doc.stdout and "download:" in doc.stdout and "remedy:" in doc.stdout
    assert "free space" in doc.stdout
    as_json = json.loads(run_bootstrap("doctor", "--volume", str(vol), "--json").stdout)
    assert as_json["envs"][0]["env_id"] == artifact.env_id and as_json["envs"][0]["tree_ok"]
    assert run_bootstrap("doctor", "--volume", str(tmp_path / "nope")).code == 22


def test_doctor_shows_parts_kept_on_the_volume(tmp_path: Path, server: Server, artifact: Artifact) -> None:
    vol = tmp_path / "vol"
    assert run_bootstrap(*_args(server, vol), env=Placement("parts", tmp_path).env()).code == 0
    doc = json.loads(run_bootstrap("doctor", "--volume", str(vol), "--json").stdout)
    assert doc["envs"] == []  # no tree on the volume
    [kept] = doc["parts"]
    assert kept["env_id"] == artifact.env_id and kept["bytes"] == artifact.manifest.archive.size
    text = run_bootstrap("doctor", "--volume", str(vol)).stdout
    assert "envs kept as parts (placement parts): 1" in text


def test_gc_keeps_n_and_never_one_in_use(tmp_path: Path, server: Server, placement: Placement) -> None:
    vol = tmp_path / "vol"
    vol.mkdir()
    arts = []
    for i in range(4):
        arts.append(make_env_artifact(server.root / f"r{i}", n_files=i + 1, with_unpack=False))
        run = run_bootstrap("--manifest-url", f"{server.url}/r{i}/manifest.json", "--volume", str(vol),
                            "--no-exec", "--keep-envs", "2", env=placement.env())
        assert run.code == 0, run.stderr
        if i == 0:  # a live worker runs env 0: it must survive every GC (on the volume and the disk)
            InUse(Layout(vol).in_use_dir(arts[0].env_id) / "worker.json").touch()
            InUse(Layout(placement.container()).in_use_dir(arts[0].env_id) / "worker.json").touch()
        time.sleep(0.05)  # distinct last-used times
    kept = sorted([arts[0].env_id, arts[2].env_id, arts[3].env_id])
    where = ["envs"] if placement.mode == "volume" else ["parts"]
    for sub in where:
        ready = sorted(p.name.split(".")[0] for p in (vol / sub).glob("*.ready.json"))
        assert ready == kept
        assert not (vol / sub / arts[1].env_id).exists()
        assert sorted(p.name for p in (vol / sub).iterdir() if p.is_dir()) == ready
    if placement.mode == "parts":  # the container disk keeps the same ones; the volume holds no tree
        local = placement.container() / "envs"
        assert sorted(p.name.split(".")[0] for p in local.glob("*.ready.json")) == kept
        assert not list((vol / "envs").iterdir())
    assert list((vol / "trash").iterdir()) == []


def test_main_in_process_failure_contract(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["--manifest-url", (tmp_path / "absent.json").as_uri(), "--volume", str(tmp_path),
                 "--no-exec"])
    out = capsys.readouterr().out.strip().splitlines()
    doc = json.loads(out[-1])
    assert code == 12 and doc["status"] == "failed" and doc["phase"] == "fetch" and doc["exit_code"] == 12


def test_unexpected_error_is_reported_as_internal(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def broken(config, on_layout):
        raise ZeroDivisionError("bug")

    code = main(["--manifest-url", "file:///x", "--volume", str(tmp_path), "--no-exec"], install=broken)
    doc = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 70 and doc["phase"] == "internal" and "ZeroDivisionError" in doc["error"]
