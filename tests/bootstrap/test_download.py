"""Transport faults against a real HTTP server: the install converges (or fails clearly), and the
bytes served show resumption rather than restarts."""

from __future__ import annotations

import hashlib
from pathlib import Path

from worker.bootstrap.fetch import FetchError, RetryPolicy

from .conftest import Artifact, Server, assert_tree_matches, bootstrap_env, make_env_artifact, run_bootstrap


def _install(server: Server, vol: Path, *extra: str, **env: str):
    vol.mkdir(exist_ok=True)
    return run_bootstrap("--manifest-url", server.manifest_url(), "--volume", str(vol), "--no-exec", *extra,
                         env=bootstrap_env(**env))


def _ready(run, artifact: Artifact) -> Path:
    assert run.code == 0, run.stderr
    result = run.result
    assert result["status"] == "ready" and result["env_id"] == artifact.env_id
    path = Path(result["path"])
    assert_tree_matches(path, artifact.files)
    return path


def test_retry_policy_is_capped_and_jittered() -> None:
    policy = RetryPolicy(attempts=5, backoff_s=1.0, backoff_max_s=4.0, jitter=0.5)
    delays = [policy.delay(n) for n in range(1, 8)]
    assert all(0.5 * min(4.0, 2 ** (n - 1)) <= d <= min(4.0, 2 ** (n - 1)) for n, d in enumerate(delays, 1))
    assert policy.delay(1, retry_after=100.0) == 4.0  # Retry-After is honoured, but capped
    assert policy.should_retry(FetchError("x", retryable=True), 4)
    assert not policy.should_retry(FetchError("x", retryable=True), 5)
    assert not policy.should_retry(FetchError("x", retryable=False), 1)


def test_connection_drops_mid_part_resume(tmp_path: Path, server: Server, artifact: Artifact) -> None:
    first = artifact.manifest.parts[0].name
    server.faults.drop_after[first] = (5000, 2)  # two deliveries cut after 5000 bytes
    run = _install(server, tmp_path / "vol")
    _ready(run, artifact)
    assert "retry 1/" in run.stderr and "resuming at" in run.stderr
    # resumed with Range: nothing was sent twice
    assert server.bytes_served <= artifact.manifest.archive.size + len(artifact.manifest_path.read_bytes())
    ranges = [r["headers"].get("Range") for r in server.part_requests() if r["path"] == first]
    assert ranges[:3] == [None, "bytes=5000-", "bytes=10000-"]


def test_5xx_is_retried(tmp_path: Path, server: Server, artifact: Artifact) -> None:
    name = artifact.manifest.parts[-1].name
    server.faults.status[name] = (503, 2)
    run = _install(server, tmp_path / "vol")
    _ready(run, artifact)
    assert run.stderr.count("HTTP 503") == 2


def test_5xx_forever_fails_clearly(tmp_path: Path, server: Server, artifact: Artifact) -> None:
    name = artifact.manifest.parts[1].name
    server.faults.status[name] = (502, 1000)
    run = _install(server, tmp_path / "vol", BOOTSTRAP_RETRIES="3")
    assert run.code == 14 and run.result["phase"] == "download"
    assert name in run.result["error"] and "HTTP 502" in run.result["error"]
    assert not list((tmp_path / "vol" / "envs").glob("*.ready.json"))


def test_slow_server_reports_progress(tmp_path: Path, server: Server, artifact: Artifact) -> None:
    server.faults.chunk, server.faults.delay_per_chunk = 1000, 0.02  # ~50 KB/s per connection
    run = _install(server, tmp_path / "vol", "--parallel", "2", BOOTSTRAP_PROGRESS_INTERVAL="0.2")
    _ready(run, artifact)
    progress = [line for line in run.stderr.splitlines() if "MB/s" in line and "ETA" in line]
    assert progress, run.stderr
    assert "% " in progress[0] or "%)" in progress[0]


def test_corrupted_byte_refetches_that_part_alone(tmp_path: Path, server: Server, artifact: Artifact) -> None:
    bad = artifact.manifest.parts[1].name
    server.faults.corrupt_once.add(bad)
    run = _install(server, tmp_path / "vol")
    _ready(run, artifact)
    assert f"part {bad} failed verification" in run.stderr
    fetched = [r["path"] for r in server.part_requests()]
    assert fetched.count(bad) == 2
    assert all(fetched.count(p.name) == 1 for p in artifact.manifest.parts if p.name != bad)


def test_missing_part_fails_clearly(tmp_path: Path, server: Server, artifact: Artifact) -> None:
    gone = artifact.manifest.parts[2].name
    server.faults.missing.add(gone)
    run = _install(server, tmp_path / "vol")
    assert run.code == 14
    assert run.result["phase"] == "download" and gone in run.result["error"] and "404" in run.result["error"]
    assert "uploaded" in run.result["remedy"]
    assert f"download: part {gone}" in run.stderr  # one line: phase, cause, remedy
    # the failure is recorded for `doctor`
    assert (tmp_path / "vol" / "logs" / "last-failure.json").is_file()


def test_server_ignoring_range_still_converges(tmp_path: Path, server: Server, artifact: Artifact) -> None:
    server.faults.ignore_range = True
    server.faults.drop_after[artifact.manifest.parts[0].name] = (3000, 1)
    _ready(_install(server, tmp_path / "vol"), artifact)


def test_resume_across_restarts(tmp_path: Path, server: Server, artifact: Artifact) -> None:
    # A previous run (killed) left half of part 0 and all of part 1 on the volume.
    vol = tmp_path / "vol"
    dl = vol / "downloads" / artifact.env_id
    dl.mkdir(parents=True)
    p0, p1 = artifact.manifest.parts[:2]
    data = artifact.data
    (dl / f"{p0.name}.partial").write_bytes(data[: p0.size // 2])
    (dl / p1.name).write_bytes(data[p0.size: p0.size + p1.size])
    run = _install(server, vol)
    path = _ready(run, artifact)
    assert run.result["downloaded_bytes"] == artifact.manifest.archive.size - p0.size // 2 - p1.size
    assert [r["headers"].get("Range") for r in server.part_requests() if r["path"] == p0.name] == [
        f"bytes={p0.size // 2}-"]
    assert not (vol / "downloads" / artifact.env_id).exists()  # cleaned after commit
    assert path.is_dir()


def test_file_url(tmp_path: Path) -> None:
    art = make_env_artifact(tmp_path / "art", part_size=4000, big=10_000)
    vol = tmp_path / "vol"
    vol.mkdir()
    run = run_bootstrap("--manifest-url", art.manifest_path.as_uri(), "--volume", str(vol), "--no-exec")
    _ready(run, art)


def test_token_goes_to_origin_only(tmp_path: Path, artifact: Artifact, server: Server) -> None:
    # The origin (like api.github.com) wants the token and redirects parts to a CDN (like
    # objects.githubusercontent.com) with a signed URL: the CDN must never see the token.
    cdn = Server(server.root)
    try:
        server.faults.require_token = "s3cret"
        server.faults.redirect_to = cdn.url
        run = _install(server, tmp_path / "vol", GITHUB_TOKEN="s3cret")
        _ready(run, artifact)
        assert all(r["headers"].get("Authorization") == "Bearer s3cret" for r in server.requests)
        assert cdn.requests and all("Authorization" not in r["headers"] for r in cdn.requests)
        assert "secret" not in run.stderr.replace("s3cret", "")  # signed query strings stay out of logs
    finally:
        cdn.close()


def test_private_without_token_says_what_to_do(tmp_path: Path, server: Server, artifact: Artifact) -> None:
    server.faults.require_token = "s3cret"
    run = _install(server, tmp_path / "vol")
    assert run.code == 12 and run.result["phase"] == "fetch" and "401" in run.result["error"]
    assert "GITHUB_TOKEN" in run.result["remedy"]


def test_manifest_sha256_of_artifact(artifact: Artifact) -> None:
    assert hashlib.sha256(artifact.data).hexdigest() == artifact.manifest.archive.sha256


def test_a_part_failing_for_good_stops_the_others(tmp_path: Path, server: Server) -> None:
    art = make_env_artifact(server.root, part_size=16_000, big=120_000)
    server.faults.missing.add(art.manifest.parts[0].name)
    server.faults.chunk, server.faults.delay_per_chunk = 1000, 0.05  # the others trickle in
    run = _install(server, tmp_path / "vol", "--parallel", "8")
    assert run.code == 14 and art.manifest.parts[0].name in run.result["error"]  # the real cause, first
    assert server.bytes_served < art.manifest.archive.size / 2  # the rest was abandoned, not finished


def test_read_ahead_hands_out_a_complete_part_in_order_and_a_shrunk_one_restarts(tmp_path: Path) -> None:
    """A complete part is read by several threads at once (network volumes answer each read after a
    round trip); the consumer still sees its bytes in order, whatever its buffer size."""
    import os
    import random

    import pytest

    from worker.bootstrap.download import StreamRestart
    from worker.bootstrap.stream import ReadAhead

    data = random.Random(7).randbytes(1_000_003)
    part = tmp_path / "part"
    part.write_bytes(data)
    with open(part, "rb") as fh:
        ahead = ReadAhead(fh.fileno(), 5, len(data), block=65_536, depth=4)
        got = bytearray()
        sizes = [1, 4096, 70_000, 131_072]
        while True:
            buf = memoryview(bytearray(sizes[len(got) % len(sizes)]))
            n = ahead.readinto(buf)
            if not n:
                break
            got += buf[:n]
        ahead.close()
    assert bytes(got) == data[5:]
    with open(part, "rb") as fh:
        ahead = ReadAhead(fh.fileno(), 0, len(data) + 100_000, block=65_536, depth=4)  # it shrank
        with pytest.raises(StreamRestart, match="shrank"):
            while ahead.readinto(memoryview(bytearray(1 << 20))):
                pass
        ahead.close()
    assert os.path.getsize(part) == len(data)
