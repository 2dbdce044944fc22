"""runpod's local test run (`python -m worker --test_input ...`, or test_input.json in the working
directory) through production's real entry point on the tiny models.

runpod 1.12 runs such a job with ``run_job``, which never iterates a generator handler; the worker must
therefore start with the plain handler there (``worker.queue.handler.start_config``), or the job
"completes" without running."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from jobkit import tiny_env

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[3]


def run_worker(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, **tiny_env(), "PYTHONPATH": str(ROOT)}
    env.pop("RUNPOD_WEBHOOK_GET_JOB", None)
    return subprocess.run([sys.executable, "-m", "worker", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def test_test_input_json_is_a_valid_job() -> None:
    job = json.loads((ROOT / "test_input.json").read_text())
    from worker.jobs.schema import TtsRequest, parse_job
    from worker.settings import JobSettings

    request = parse_job(job["input"], JobSettings())
    assert isinstance(request, TtsRequest) and request.timestamps and request.subtitles == "srt"


def test_python_m_worker_runs_test_input_json(tmp_path: Path) -> None:
    (tmp_path / "test_input.json").write_text((ROOT / "test_input.json").read_text())
    done = run_worker([], cwd=tmp_path)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-3000:]
    assert "Job local_test completed successfully" in log, log[-3000:]
    result = log[log.index("Job result: "):]
    assert "generator object" not in result, "the handler's generator was never run"
    assert "'audio': '" in result and "'subtitles': '1\\n00:00:" in result and "'words': [{" in result


def test_python_m_worker_test_input_flag_reports_a_bad_job(tmp_path: Path) -> None:
    done = run_worker(["--test_input", json.dumps({"input": {"text": "Hi.", "speed": 9}})], cwd=tmp_path)
    log = done.stdout + done.stderr
    assert done.returncode == 1, log[-3000:]
    assert "input.speed: must be from 0.25 to 4 (got 9)" in log and "input.ref_audio: is required" in log
