"""What ships is what is tested: the env this suite runs in is env/requirements.lock, installed as
`pack build` installs it (devtools/devenv.py), and it holds what the worker imports and runs.

If the venv drifts from the lock (a tool that moved a locked package, a lock changed without
reinstalling), the first test fails and names every difference.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

from devtools import devenv
from devtools.tiny import tiny_config
from worker.engine.core import Engine, SynthesisParams

ROOT = Path(__file__).resolve().parents[1]
TINY_CACHE = ROOT / ".cache" / "tiny-models"
# What the worker imports, directly or through F5-TTS and WhisperX.
WORKER_IMPORTS = ("torch", "torchaudio", "f5_tts.model", "f5_tts.infer.utils_infer", "vocos", "whisperx",
                  "whisperx.alignment", "faster_whisper", "ctranslate2", "pyannote.audio", "runpod")


def test_the_test_env_is_the_production_pip_lock() -> None:
    assert devenv.check(Path(sys.prefix)) == []


def test_drift_names_every_difference() -> None:
    state = devenv.Installed(
        versions={"torch": "2.13.0+cpu", "numpy": "2.4.6"},
        pip_check=["f5-tts 1.1.22 requires gradio, which is not installed.",
                   "whisperx 3.8.6 has requirement torch~=2.8, but you have torch 2.13.0+cpu."],
    )
    problems = devenv.drift({"torch": "2.8.0", "numpy": "2.4.6", "datasets": "5.0.1"}, state, {"gradio"})
    assert problems == [
        "datasets: the lock pins 5.0.1, the venv has nothing",
        "torch: the lock pins 2.8.0, the venv has 2.13.0+cpu",
        "pip check: whisperx 3.8.6 has requirement torch~=2.8, but you have torch 2.13.0+cpu.",
    ]


def test_overrides_are_the_only_allowed_pip_check_complaints() -> None:
    assert devenv.overridden_names() == {"gradio"}


def test_the_worker_stack_imports() -> None:
    code = "import importlib, sys\nfor m in sys.argv[1:]:\n    importlib.import_module(m)\n"
    proc = subprocess.run([sys.executable, "-c", code, *WORKER_IMPORTS], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_the_engine_loads_the_tiny_models_and_synthesizes() -> None:
    engine = Engine.load(tiny_config(TINY_CACHE))
    ref = 0.1 * np.random.default_rng(0).standard_normal(48_000).astype(np.float32)
    chunks = engine.synthesize("What ships is what is tested.", ref, "This is the reference voice.",
                               SynthesisParams(nfe_step=4))
    audio = np.concatenate(list(chunks))
    assert audio.dtype == np.float32 and len(audio) > 0 and np.isfinite(audio).all()
