"""WorkerConfig.from_env: defaults, parsing, and errors that name the variable."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from worker.config import ConfigError, WorkerConfig, parse_align_models


def test_defaults_serve_production():
    cfg = WorkerConfig.from_env({})
    assert cfg.volume == Path("/runpod-volume") and cfg.models_dir == Path("/runpod-volume/models")
    assert cfg.f5_arch == "F5TTS_v1_Base" and cfg.f5_ckpt.startswith("hf:SWivid/F5-TTS@")
    assert cfg.f5_sampler == "fast" and cfg.f5_cuda_graphs and not cfg.f5_compile
    # Upstream's exact length by default (padded buckets, masked); snapping the length is opt-in.
    assert cfg.f5_bucket_frames == 64 and not cfg.f5_length_snap
    assert cfg.default_language == "en" and "en" in cfg.align_models
    assert cfg.nltk_dir == Path("/runpod-volume/models/nltk")


def test_variables_are_read():
    cfg = WorkerConfig.from_env({
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
    with pytest.raises(ConfigError, match=name):
        WorkerConfig.from_env(env)


def test_align_models_parse():
    assert parse_align_models(" en=/a ,fr=hf:x/y@1:z ") == {"en": "/a", "fr": "hf:x/y@1:z"}
    # A bare language takes WhisperX's own default model for it (resolved at startup).
    assert parse_align_models("en, ja ,de=torchaudio:VOXPOPULI_ASR_BASE_10K_DE") == {
        "en": "whisperx", "ja": "whisperx", "de": "torchaudio:VOXPOPULI_ASR_BASE_10K_DE"}
    assert WorkerConfig.from_env({}).align_models == {"en": "whisperx"}


def _run_worker(env_extra: dict[str, str], tmp_path: Path):
    import os
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

    from worker.limits import JobLimits

    assert WorkerConfig.from_env({}).volume == Path("/runpod-volume")
    assert WorkerConfig.from_env({"BOOTSTRAP_VOLUME": "/var/tmp/vol"}).volume == Path("/var/tmp/vol")
    env = {"BOOTSTRAP_VOLUME": "/var/tmp/vol", "WORKER_VOLUME": "/data"}
    assert WorkerConfig.from_env(env).volume == Path("/data")
    assert JobLimits.from_env({"BOOTSTRAP_VOLUME": "/var/tmp/vol"}).voices_dir == Path("/var/tmp/vol/voices")


def test_compiled_kernels_are_cached_on_the_volume(tmp_path, monkeypatch) -> None:
    from worker.engine import use_compile_cache

    # As inductor leaves it once it has run: its own default written into the variable.
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "/tmp/torchinductor_someone")
    cache = use_compile_cache(tmp_path / "volume")
    assert cache == tmp_path / "volume" / "cache" / "torchinductor" and cache.is_dir()
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(cache)


def test_a_compile_cache_the_user_set_wins(tmp_path, monkeypatch) -> None:
    from worker.engine import use_compile_cache

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "/tmp/torchinductor_someone")
    config = WorkerConfig.from_env({"TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "mine")})
    assert use_compile_cache(tmp_path / "volume", config.compile_cache_dir) == tmp_path / "mine"
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "mine")
    assert not (tmp_path / "volume").exists()
    assert WorkerConfig.from_env({}).compile_cache_dir is None


def test_a_volume_that_refuses_the_cache_leaves_inductor_s_default(tmp_path, monkeypatch, caplog) -> None:
    from worker.engine import use_compile_cache

    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    (tmp_path / "volume").write_text("a file where the volume should be")
    with caplog.at_level("WARNING"):
        assert use_compile_cache(tmp_path / "volume") is None
    assert "TORCHINDUCTOR_CACHE_DIR" not in os.environ
    assert "every worker compiles for itself" in caplog.text


def test_compiling_without_a_c_compiler_is_refused_naming_the_variable(tmp_path, monkeypatch) -> None:
    # Triton builds its kernel launcher with a C compiler on first use; the slim image has none.
    from worker.engine import prepare_compile

    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # no gcc, clang or cc here
    config = WorkerConfig.from_env({"F5_COMPILE": "1", "WORKER_VOLUME": str(tmp_path / "vol")})
    with pytest.raises(ConfigError, match="F5_COMPILE=1 needs a C compiler"):
        prepare_compile(config)
    assert not (tmp_path / "vol").exists()
    monkeypatch.setenv("CC", "/usr/bin/gcc")
    assert prepare_compile(config) == tmp_path / "vol" / "cache" / "torchinductor"
