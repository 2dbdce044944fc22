"""`just demo`, the README's first command: the whole chain offline, run for real, twice.

Pack (example env + the production pip lock, env/requirements.lock) -> a Range HTTP server on
127.0.0.1 -> the real installer onto a temporary volume -> the worker exec'd from the installed env's
own interpreter on the runpod local API -> a TTS job with timestamps + SRT and a transcription job.
It shares the demo's caches (.cache/demo, .cache/tiny-models) with `just demo`, as a developer would.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from devtools import child_env

ROOT = Path(__file__).resolve().parents[1]


def run_demo() -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "devtools.demo"], cwd=ROOT, env=child_env(), text=True,
                          capture_output=True, timeout=3000)


@pytest.mark.slow
def test_demo_runs_the_whole_chain_and_reuses_on_the_second_run() -> None:
    import soundfile

    first = run_demo()
    assert first.returncode == 0, first.stderr[-6000:]
    wav = Path(first.stdout.strip().splitlines()[-1])
    info = soundfile.info(str(wav))
    assert info.samplerate == 24000 and info.frames > 24000 // 2
    srt = (wav.parent / "demo.srt").read_text()
    assert " --> " in srt and srt.lstrip().startswith("1")
    for phase in ("models", "wheels", "pack", "install", "start", "jobs"):
        assert f"[{phase}] done" in first.stderr
    assert "== demo summary ==" in first.stdout

    second = run_demo()
    assert second.returncode == 0, second.stderr[-6000:]
    assert second.stdout.strip().splitlines()[-1] == str(wav)
    assert "hashes match the lock: reused" in second.stderr  # wheels
    assert "reusing" in second.stderr and "every part verified" in second.stderr  # pack
