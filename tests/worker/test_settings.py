"""worker.settings: defaults, parsing, one boolean vocabulary, every issue at once, errors that name the
variable; and the reference-length cap reaching the engine."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from worker.settings import EngineSettings, SettingsError, parse_align_models


def test_defaults_serve_production():
    cfg = EngineSettings.from_env({})
    assert cfg.volume == Path("/runpod-volume") and cfg.models_dir == Path("/runpod-volume/models")
    assert cfg.f5_arch == "F5TTS_v1_Base" and cfg.f5_ckpt.startswith("hf:SWivid/F5-TTS@")
    assert cfg.f5_sampler == "fast" and cfg.f5_cuda_graphs and not cfg.f5_compile
    # Upstream's exact length by default (padded buckets, masked); snapping the length is opt-in.
    assert cfg.f5_bucket_frames == 64 and not cfg.f5_length_snap
    assert cfg.default_language == "en" and "en" in cfg.align_models
    assert cfg.nltk_dir == Path("/runpod-volume/models/nltk")


def test_variables_are_read():
    cfg = EngineSettings.from_env({
        "WORKER_VOLUME": "/vol", "WORKER_DEVICE": "cpu", "F5_CUDA_GRAPHS": "0", "F5_COMPILE": "yes",
        "F5_BUCKET_FRAMES": "32", "WHISPER_VAD": "none", "ALIGN_MODELS": "en=/m/en, de=hf:o/r@abc",
        "DEFAULT_LANGUAGE": "de", "NLTK_DATA": "/nltk", "F5_DTYPE": "bfloat16", "F5_LENGTH_SNAP": "1",
    })
    assert cfg.volume == Path("/vol") and cfg.device == "cpu"
    assert not cfg.f5_cuda_graphs and cfg.f5_compile and cfg.f5_bucket_frames == 32 and cfg.f5_length_snap
    assert cfg.align_models == {"en": "/m/en", "de": "hf:o/r@abc"} and cfg.default_language == "de"
    assert cfg.nltk_dir == Path("/nltk") and cfg.f5_dtype == "bfloat16" and cfg.whisper_vad == "none"


@pytest.mark.parametrize(("env", "name"), [
    ({"WORKER_DEVICE": "tpu"}, "WORKER_DEVICE"),
    ({"F5_CUDA_GRAPHS": "maybe"}, "F5_CUDA_GRAPHS"),
    ({"F5_BUCKET_FRAMES": "0"}, "F5_BUCKET_FRAMES"),
    ({"F5_BUCKET_FRAMES": "x"}, "F5_BUCKET_FRAMES"),
    ({"F5_SAMPLER": "magic"}, "F5_SAMPLER"),
    ({"ALIGN_MODELS": "en="}, "ALIGN_MODELS"),
    ({"ALIGN_MODELS": "=hf:o/r@1"}, "ALIGN_MODELS"),
    ({"DEFAULT_LANGUAGE": "fr"}, "DEFAULT_LANGUAGE"),
])
def test_bad_values_name_the_variable(env, name):
    with pytest.raises(SettingsError, match=name):
        EngineSettings.from_env(env)


def test_align_models_parse():
    assert parse_align_models(" en=/a ,fr=hf:x/y@1:z ") == {"en": "/a", "fr": "hf:x/y@1:z"}
    # A bare language takes WhisperX's own default model for it (resolved at startup).
    assert parse_align_models("en, ja ,de=torchaudio:VOXPOPULI_ASR_BASE_10K_DE") == {
        "en": "whisperx", "ja": "whisperx", "de": "torchaudio:VOXPOPULI_ASR_BASE_10K_DE"}
    assert EngineSettings.from_env({}).align_models == {"en": "whisperx"}


def _run_worker(env_extra: dict[str, str], tmp_path: Path):
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root), "WORKER_VOLUME": str(tmp_path), **env_extra}
    return subprocess.run([sys.executable, "-m", "worker"], env=env, capture_output=True, text=True,
                          timeout=300, cwd=root)


def test_python_m_worker_stops_on_a_bad_variable_with_one_clear_line(tmp_path):
    proc = _run_worker({"WORKER_DEVICE": "tpu"}, tmp_path)
    assert proc.returncode == 2
    assert "worker startup failed in config: WORKER_DEVICE='tpu'" in proc.stderr
    assert proc.stdout == ""


def test_python_m_worker_stops_on_a_missing_model_before_serving(tmp_path):
    proc = _run_worker({"WORKER_DEVICE": "cpu", "F5_CKPT": str(tmp_path / "nope.safetensors")}, tmp_path)
    assert proc.returncode == 2
    assert "worker startup failed in models: F5_CKPT=" in proc.stderr and "no such file" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_volume_follows_the_installer_unless_set():
    """The installer exports the volume it really used (maybe the container-disk fallback): models and
    voices go there too, unless WORKER_VOLUME says otherwise."""

    from worker.settings import JobSettings

    assert EngineSettings.from_env({}).volume == Path("/runpod-volume")
    assert EngineSettings.from_env({"BOOTSTRAP_VOLUME": "/var/tmp/vol"}).volume == Path("/var/tmp/vol")
    env = {"BOOTSTRAP_VOLUME": "/var/tmp/vol", "WORKER_VOLUME": "/data"}
    assert EngineSettings.from_env(env).volume == Path("/data")
    voices = JobSettings.from_env({"BOOTSTRAP_VOLUME": "/var/tmp/vol"}).voices_dir
    assert voices == Path("/var/tmp/vol/voices")


@pytest.mark.parametrize(("raw", "value"), [("1", True), ("true", True), ("Yes", True), ("on", True),
                                            ("0", False), ("false", False), ("no", False), ("OFF", False)])
def test_one_boolean_vocabulary_for_every_flag(raw: str, value: bool) -> None:
    from worker.settings import Settings

    flags = ("F5_COMPILE", "WORKER_ALLOW_PRIVATE_URLS", "WORKER_STREAMING")
    settings = Settings.from_env(dict.fromkeys(flags, raw))
    assert settings.engine.f5_compile is settings.jobs.allow_private_urls is settings.jobs.streaming is value


def test_every_issue_is_reported_at_once() -> None:
    from worker.settings import Settings

    with pytest.raises(SettingsError) as caught:
        Settings.from_env({"WORKER_DEVICE": "tpu", "F5_CUDA_GRAPHS": "maybe", "WORKER_JOB_TIMEOUT_S": "0",
                           "WORKER_STREAMING": "perhaps"})
    assert caught.value.fields == ["WORKER_DEVICE", "F5_CUDA_GRAPHS", "WORKER_JOB_TIMEOUT_S",
                                   "WORKER_STREAMING"]
    assert "WORKER_DEVICE='tpu' must be one of auto, cuda, cpu" in str(caught.value)


def test_the_volume_is_resolved_once_for_both_layers() -> None:
    from worker.settings import Settings

    settings = Settings.from_env({"BOOTSTRAP_VOLUME": "/var/tmp/vol"})
    assert settings.engine.models_dir == Path("/var/tmp/vol/models")
    assert settings.jobs.voices_dir == Path("/var/tmp/vol/voices")


def test_the_reference_cap_is_the_configured_one() -> None:
    """WORKER_MAX_REF_SECONDS above the engine's old hard-coded 20 s reaches the engine: a 25 s reference
    plans (batches of at least 2 s of speech each), and the default still refuses it by name."""
    import numpy as np
    from jobkit import TINY_CACHE

    from devtools.tiny import tiny_config
    from worker.engine.core import Engine, EngineError, SynthesisParams

    assert EngineSettings.from_env({"WORKER_MAX_REF_SECONDS": "30"}).max_ref_seconds == 30.0
    ref = (0.1 * np.random.default_rng(0).standard_normal(25 * 24_000)).astype(np.float32)
    ref_text = "A long reference, read slowly and plainly for twenty five seconds. " * 4
    params = SynthesisParams(seed=0)
    default = Engine.load(tiny_config(TINY_CACHE))
    with pytest.raises(EngineError, match="longer than 20 s") as caught:
        default.planned_seconds("Hello there. How are you?", ref, ref_text, params)
    assert caught.value.where == "ref_audio"
    longer = Engine.load(tiny_config(TINY_CACHE, max_ref_seconds=30.0))
    assert longer.max_ref_seconds == 30.0
    assert longer.planned_seconds("Hello there. How are you?", ref, ref_text, params) > 0
